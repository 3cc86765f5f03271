export * from './types.js';
export { parsePriceSheet } from './prices.js';
export { Meter, utcDay, type MeteredSandbox } from './meter.js';
export { UsageRepository, costOf } from './usage-repo.js';
export { usageReport } from './usage-service.js';
export { EngineMetering, DEFAULT_USAGE_SAMPLE_MS } from './engine-metering.js';
