// Loads an exported TF.js graph model from the file system with @tensorflow/tfjs (pure JS CPU
// backend, no tfjs-node needed) and prints its scores for the given pixels as one line of JSON.
//
//   node load_graph_model.mjs <model.json> <pixels.f32> <shape, e.g. 4,32,32,3>
//
// pixels.f32 holds little-endian float32 values in row-major order. Output:
//   {"shape": [4, G], "scores": [...flat float32 values...]}
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';

function toArrayBuffer(buffer) {
  return buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength);
}

// An IOHandler that reads model.json and its weight shards from disk, as tf.io.browserFiles
// would in a browser: the shards are concatenated in manifest order.
function fileSystemHandler(modelJsonPath) {
  return {
    async load() {
      const modelJson = JSON.parse(await readFile(modelJsonPath, 'utf8'));
      const folder = path.dirname(modelJsonPath);
      const weightSpecs = [];
      const shards = [];
      for (const group of modelJson.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const shardPath of group.paths) {
          shards.push(await readFile(path.join(folder, shardPath)));
        }
      }
      return tf.io.getModelArtifactsForJSON(modelJson, async () => [weightSpecs, toArrayBuffer(Buffer.concat(shards))]);
    },
  };
}

async function main() {
  const [modelJsonPath, pixelsPath, shapeText] = process.argv.slice(2);
  if (!modelJsonPath || !pixelsPath || !shapeText) {
    console.error('usage: node load_graph_model.mjs <model.json> <pixels.f32> <shape>');
    process.exit(2);
  }
  await tf.setBackend('cpu');
  const model = await tf.loadGraphModel(fileSystemHandler(modelJsonPath));
  const shape = shapeText.split(',').map(Number);
  const values = new Float32Array(toArrayBuffer(await readFile(pixelsPath)));
  const pixels = tf.tensor(values, shape, 'float32');
  let output = model.predict(pixels);
  if (!(output instanceof tf.Tensor)) {
    // A signature with named outputs answers with a map; the contract's output is "scores".
    output = Array.isArray(output) ? output[0] : (output.scores ?? Object.values(output)[0]);
  }
  const scores = Array.from(await output.data());
  process.stdout.write(JSON.stringify({ shape: output.shape, scores }) + '\n');
}

main().catch((error) => {
  console.error(error && error.stack ? error.stack : String(error));
  process.exit(1);
});
