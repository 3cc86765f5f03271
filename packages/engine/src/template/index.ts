/** The template subsystem's operations, as the engine and scripts use them. */
export { buildTemplate, builtinRecipeDigest, ensureTemplate, resolveRecipe, type BuildTemplateOptions, type EnsureTemplateOptions } from './build-template.js';
export { importTemplate, type ImportTemplateOptions } from './import-template.js';
export { removeTemplate, type RemoveTemplateOptions } from './remove-template.js';
export { collectGarbage } from './layer-store.js';
export { TemplateStore, type ResolvedTemplate, type StoredTemplateInfo } from './template-store.js';
export { BUILTIN_RECIPES } from './recipe.js';
export { DEFAULT_IMPORT_LIMITS, type ImportLimits } from './import-limits.js';
