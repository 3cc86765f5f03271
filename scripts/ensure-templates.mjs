#!/usr/bin/env node
// Builds the `tiny` and `base` templates into the shared templates directory when they are
// missing (quickstart runs this after `npm run build`). Usage: node scripts/ensure-templates.mjs [DIR]
import { ensureTemplate } from '../packages/engine/dist/src/template/build-template.js';
import { TemplateStore } from '../packages/engine/dist/src/template/template-store.js';

const dir = process.argv[2] ?? process.env.AIRLOCK_TEMPLATES_DIR ?? '/var/lib/airlock/templates';
const store = new TemplateStore(dir);

for (const name of ['tiny', 'base']) {
  const present = store.info(name);
  if (present) {
    console.log(`template ${name}: present (${Math.round(present.sizeBytes / 2 ** 20)} MiB, ${present.path})`);
    continue;
  }
  console.log(`template ${name}: building in ${store.dir}${name === 'base' ? ' (debootstrap, about a minute)' : ''}`);
  try {
    await ensureTemplate(dir, name, { log: (line) => console.log(`  ${name}: ${line}`) });
  } catch (e) {
    console.error(`template ${name}: build failed: ${e.message}`);
    process.exit(1);
  }
}
