/** A configuration the gateway refuses to boot with; main prints its message and exits 2. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}
