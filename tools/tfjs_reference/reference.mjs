// Reference outputs of the face-api and Human models, computed by TF.js 4.22.0 on its CPU backend.
//
//   node reference.mjs <workdir> <human-models dir>
//
// Reads the aligned chips written by make_fixture.py (<workdir>/<name>.{u8,json}) and writes
// <workdir>/reference.json. Preprocessing is the packages' own:
// - face-api 1.7.15: nets.ageGenderNet / nets.faceExpressionNet `forward()` on 112x112 face
//   tensors (pixel values 0..255), i.e. NetInput.toBatchTensor(112) -> normalize(mean_rgb) / 255
//   -> net; age/gender as AgeGenderNet.forwardInput (age regression, softmax gender),
//   expressions softmax.
// - Human (src/face/faceres.ts, src/face/mobilefacenet.ts, src/gear/gear.ts, src/gear/emotion.ts):
//   the face tensor is the chip / 255 (Human's crops are 0..1); faceres: resizeBilinear to
//   224 then * 255; mobilefacenet: resizeBilinear to 112; gear: cropAndResize box
//   [0, 0.1, 0.9, 0.9] to 198; emotion: resizeBilinear to 64, grey = sum(rgb * [0.2989, 0.587,
//   0.114]), (grey - 0.5) * 2. These lines mirror Human's code; the models run through
//   tf.GraphModel.execute exactly as Human runs them.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { tf, initTf, pkgDir, readU8, fileHandler, encode } from './lib.mjs';

const require = createRequire(import.meta.url);
const faceapi = require('@vladmandic/face-api');

const [work, humanModels] = process.argv.slice(2);
await initTf();
const out = { tfjs: tf.version.tfjs, backend: tf.getBackend(), faceapi: faceapi.version };

function chips(name) {
  const c = readU8(work, name);
  return tf.tensor4d(Float32Array.from(c.data), c.shape, 'float32'); // 0..255
}

// ---- face-api ------------------------------------------------------------------------------
const faModels = path.join(pkgDir('@vladmandic/face-api'), 'model');
await faceapi.nets.ageGenderNet.loadFromDisk(faModels);
await faceapi.nets.faceExpressionNet.loadFromDisk(faModels);
{
  const x = chips('faceapi_112');
  const faces = tf.unstack(x); // a list of 3D tensors -> one NetInput batch
  const ag = await faceapi.nets.ageGenderNet.forward(faces);
  out.faceapi_age = await encode(ag.age);
  out.faceapi_gender = await encode(ag.gender);
  const ex = await faceapi.nets.faceExpressionNet.forward(faces);
  out.faceapi_expression = await encode(ex);
}

// ---- Human graph models --------------------------------------------------------------------
async function graph(name) {
  return tf.loadGraphModel(fileHandler(path.join(humanModels, `${name}.json`)));
}
{
  const face = tf.div(chips('human_224'), 255); // Human's face crops are 0..1
  const model = await graph('faceres');
  // faceres.ts enhance(): resizeBilinear to the model size, then * 255
  const crop = tf.image.resizeBilinear(face, [model.inputs[0].shape[2], model.inputs[0].shape[1]], false);
  const enhanced = tf.mul(crop, 255);
  const [desc, gender, age] = model.execute(enhanced, ['global_pooling/Mean', 'gender_pred/Sigmoid', 'age_pred/Softmax']);
  out.faceres_descriptor = await encode(desc);
  out.faceres_gender = await encode(gender);
  out.faceres_age = await encode(age);

  const gear = await graph('gear');
  const ages = []; const genders = []; const races = [];
  for (const one of tf.unstack(face)) { // gear.ts runs one face at a time
    const img = tf.expandDims(one, 0);
    const resized = tf.image.cropAndResize(img, [[0.0, 0.10, 0.90, 0.90]], [0], [gear.inputs[0].shape[2], gear.inputs[0].shape[1]]);
    const [a, g, r] = gear.execute(resized, ['Identity', 'Identity_1', 'Identity_2']);
    ages.push(a); genders.push(g); races.push(r);
  }
  out.gear_age = await encode(tf.concat(ages));
  out.gear_gender = await encode(tf.concat(genders));
  out.gear_race = await encode(tf.concat(races));

  const emotion = await graph('emotion');
  const size = emotion.inputs[0].shape[2];
  const resize = tf.image.resizeBilinear(face, [size, size], false);
  const channels = tf.mul(resize, tf.tensor1d([0.2989, 0.5870, 0.1140], 'float32'));
  const grayscale = tf.sum(channels, 3, true);
  const norm = tf.mul(tf.sub(grayscale, 0.5), 2.0);
  out.emotion = await encode(emotion.execute(norm));
  out.emotion_input = await encode(tf.slice(norm, [0, 0, 0, 0], [2, -1, -1, -1])); // 2 faces suffice
}
{
  const face = tf.div(chips('human_112'), 255);
  const model = await graph('mobilefacenet');
  const crop = tf.image.resizeBilinear(face, [model.inputs[0].shape[2], model.inputs[0].shape[1]], false);
  out.mobilefacenet = await encode(model.execute(crop));
  // an intermediate node of two faces, for the features() test
  const two = tf.slice(crop, [0, 0, 0, 0], [2, -1, -1, -1]);
  out.mobilefacenet_block6 = await encode(model.execute(two, 'MobileFaceNet/MobileFaceNet/Conv2d_6_InvResBlock_1/Add'));
}

fs.writeFileSync(path.join(work, 'reference.json'), JSON.stringify(out));
console.log(`wrote ${path.join(work, 'reference.json')}`);
