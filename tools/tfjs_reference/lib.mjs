// Shared helpers of the reference scripts: TF.js on the pure-JS CPU backend, models read from disk.
//
// `@tensorflow/tfjs-node` is aliased to `@tensorflow/tfjs` in package.json (the native tfjs-node
// binary is not available here), so the packages' Node builds (`face-api.node.js`,
// `human.node.js`) load on the same pure-JS TF.js instance.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
export const tf = require('@tensorflow/tfjs');
export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const pkgDir = (name) => path.join(HERE, 'node_modules', name);

export async function initTf() {
  await tf.setBackend('cpu');
  await tf.ready();
  if (tf.getBackend() !== 'cpu') throw new Error(`expected the cpu backend, got ${tf.getBackend()}`);
}

// An IOHandler reading a TF.js model.json (graph or layers model) and its shards from disk.
export function fileHandler(jsonPath) {
  return {
    load: async () => {
      const model = JSON.parse(fs.readFileSync(jsonPath, 'utf8'));
      const dir = path.dirname(jsonPath);
      const specs = [];
      const buffers = [];
      for (const group of model.weightsManifest) {
        specs.push(...group.weights);
        for (const p of group.paths) buffers.push(fs.readFileSync(path.join(dir, p)));
      }
      const all = Buffer.concat(buffers);
      return {
        modelTopology: model.modelTopology,
        format: model.format,
        generatedBy: model.generatedBy,
        convertedBy: model.convertedBy,
        signature: model.signature,
        userDefinedMetadata: model.userDefinedMetadata,
        weightSpecs: specs,
        weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength),
      };
    },
  };
}

// `file://...json` URLs (used by Human's loadModel) are served by fileHandler.
export function registerFileRouter() {
  tf.io.registerLoadRouter((url) => {
    const u = Array.isArray(url) ? url[0] : url;
    if (typeof u === 'string' && u.startsWith('file://')) return fileHandler(u.slice('file://'.length));
    return null;
  });
}

// Raw uint8 images written by the Python side: <name>.u8 holding [n, h, w, c] and <name>.json
// with {"shape": [n, h, w, c]}.
export function readU8(dir, name) {
  const meta = JSON.parse(fs.readFileSync(path.join(dir, `${name}.json`), 'utf8'));
  const buf = fs.readFileSync(path.join(dir, `${name}.u8`));
  return { shape: meta.shape, data: new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength), meta };
}

// float32 results as {name: {shape, data(base64 little-endian float32)}} (exact, compact).
export async function encode(t) {
  const data = await t.data();
  const f32 = Float32Array.from(data);
  return { shape: t.shape, dtype: 'float32', b64: Buffer.from(f32.buffer).toString('base64') };
}
