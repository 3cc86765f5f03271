#!/usr/bin/env node
// Builds the built-in templates (`tiny`, then `base`) into the shared templates directory when
// they are missing or their recipe changed since they were built (the digest differs: an
// older Airlock's template, or an edited packages/engine/templates/*.yaml). Unchanged layers
// are reused, so an upgrade rebuilds only what changed. quickstart runs this after the build.
// Usage: node scripts/ensure-templates.mjs [DIR]
import { builtinRecipeDigest, ensureTemplate } from '../packages/engine/dist/src/template/index.js';
import { TemplateStore } from '../packages/engine/dist/src/template/template-store.js';

const dir = process.argv[2] ?? process.env.AIRLOCK_TEMPLATES_DIR ?? '/var/lib/airlock/templates';
const store = new TemplateStore(dir);

for (const name of ['tiny', 'base']) {
  const present = store.info(name);
  const wanted = await builtinRecipeDigest(name);
  if (present && present.digest === wanted) {
    console.log(`template ${name}: up to date (${wanted.slice(0, 19)}, ${Math.round(present.sizeBytes / 2 ** 20)} MiB)`);
    continue;
  }
  const why = present ? `its recipe changed (${present.digest?.slice(0, 19) ?? 'old layout'} -> ${wanted.slice(0, 19)})` : 'missing';
  console.log(`template ${name}: ${why}; building in ${store.dir}${name === 'base' ? ' (debootstrap and apt-get, a few minutes the first time)' : ''}`);
  try {
    await ensureTemplate(dir, name, { log: (line) => console.log(`  ${name}: ${line}`) });
  } catch (e) {
    console.error(`template ${name}: build failed: ${e.message}`);
    process.exit(1);
  }
}
