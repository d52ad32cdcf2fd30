import { parseArgs } from 'node:util';
import { importModel } from './model/import.js';

const USAGE = `usage:
  carryon import SRC OUT [--tokenizer TOKENIZER_BIN] [--name NAME] [--layers 2,4]
      Build a model package folder OUT from a llama2.c checkpoint (.bin, with its tokenizer.bin)
      or a llama-architecture GGUF file (F32, F16, Q8_0, Q4_0 tensors).
  carryon serve
      Start the gateway (same as npm start); configured by environment variables, see README.`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'import': {
      const { values, positionals } = parseArgs({
        args: rest,
        allowPositionals: true,
        options: { tokenizer: { type: 'string' }, name: { type: 'string' }, layers: { type: 'string' } },
      });
      if (positionals.length !== 2) {
        console.error(USAGE);
        return 2;
      }
      const [src, out] = positionals;
      const extraLayerOutputs = values.layers ? values.layers.split(',').map((s) => Number.parseInt(s, 10)) : undefined;
      const manifest = await importModel(src, out, { tokenizerPath: values.tokenizer, name: values.name, extraLayerOutputs });
      console.log(`imported ${src} -> ${out} (fingerprint ${manifest.fingerprint}, ${manifest.quantization})`);
      return 0;
    }
    case 'serve':
      await import('./main.js');
      return -1;
    default:
      console.error(USAGE);
      return command === undefined || command === '--help' || command === 'help' ? 0 : 2;
  }
}

const code = await main(process.argv.slice(2)).catch((err: Error) => {
  console.error(`carryon: ${err.message}`);
  return 1;
});
if (code >= 0) process.exitCode = code;
