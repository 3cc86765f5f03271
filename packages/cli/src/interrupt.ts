/** Ctrl-C handling: the first SIGINT/SIGTERM asks for a clean stop, a second one exits at once. */
import { EXIT, warn } from './output.js';

export interface Interrupt {
  /** Aborted on the first signal; hand it to exec so the command is killed. */
  readonly signal: AbortSignal;
  /** The signal received, or null. */
  readonly received: () => NodeJS.Signals | null;
  /** Removes the handlers (the default behaviour returns). */
  dispose(): void;
}

export function watchInterrupts(): Interrupt {
  const controller = new AbortController();
  let received: NodeJS.Signals | null = null;
  const onSignal = (sig: NodeJS.Signals) => {
    if (received) {
      warn('interrupted again: exiting without waiting for cleanup');
      process.exit(EXIT.interrupted);
    }
    received = sig;
    controller.abort(new Error(`received ${sig}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return {
    signal: controller.signal,
    received: () => received,
    dispose() {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}
