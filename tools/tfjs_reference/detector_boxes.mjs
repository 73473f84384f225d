// Face boxes of the packages' own detectors on LFW images, to find which faceveil CropSpec (dlib
// 5-point chip geometry) matches the crop each package feeds its models (see crop_study.py).
//
//   node detector_boxes.mjs <workdir>     (reads <workdir>/images.{u8,json}, writes boxes.json)
//
// face-api: SsdMobilenetv1 + FaceLandmark68Net; its age/gender and expression nets receive
//   `alignedRect` (bbox of the 68 landmarks padded by 20 %), zero-padded to a square and resized
//   to 112 (extractFaceTensors + NetInput.toBatchTensor(112, isCenterInputs=true)).
// Human: BlazeFace box enlarged by face.detector.scale (1.4) and squarified
//   (blazeface.ts getBoxes); with face.mesh disabled `face.box` is exactly that crop box.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { tf, initTf, pkgDir, readU8, registerFileRouter } from './lib.mjs';

const require = createRequire(import.meta.url);
const faceapi = require('@vladmandic/face-api');
const { Human } = require('@vladmandic/human');

const work = process.argv[2];
await initTf();
registerFileRouter();

const faModels = path.join(pkgDir('@vladmandic/face-api'), 'model');
await faceapi.nets.ssdMobilenetv1.loadFromDisk(faModels);
await faceapi.nets.faceLandmark68Net.loadFromDisk(faModels);

const humanModels = path.join(pkgDir('@vladmandic/human'), 'models');
const human = new Human({
  backend: 'cpu',
  modelBasePath: `file://${humanModels}/`,
  debug: false,
  async: false,
  filter: { enabled: false },
  face: {
    enabled: true,
    detector: { rotation: false, maxDetected: 5, return: false },
    mesh: { enabled: false },
    iris: { enabled: false },
    attention: { enabled: false },
    emotion: { enabled: false },
    description: { enabled: false },
    antispoof: { enabled: false },
    liveness: { enabled: false },
  },
  body: { enabled: false },
  hand: { enabled: false },
  object: { enabled: false },
  gesture: { enabled: false },
  segmentation: { enabled: false },
});
await human.load();

const imgs = readU8(work, 'images');
const [n, h, w, c] = imgs.shape;
const out = [];
for (let i = 0; i < n; i++) {
  const pixels = imgs.data.subarray(i * h * w * c, (i + 1) * h * w * c);
  const t3 = tf.tensor3d(Int32Array.from(pixels), [h, w, c], 'int32');
  const dets = await faceapi.detectAllFaces(t3, new faceapi.SsdMobilenetv1Options({ minConfidence: 0.3 }))
    .withFaceLandmarks();
  const fa = dets.map((d) => ({
    score: d.detection.score,
    box: [d.detection.box.x, d.detection.box.y, d.detection.box.width, d.detection.box.height],
    aligned: [d.alignedRect.box.x, d.alignedRect.box.y, d.alignedRect.box.width, d.alignedRect.box.height],
  }));
  const t4 = tf.expandDims(tf.cast(t3, 'float32'), 0);
  const res = await human.detect(t4);
  const hu = res.face.map((f) => ({ score: f.boxScore, box: f.box }));
  out.push({ faceapi: fa, human: hu });
  tf.dispose([t3, t4]);
  if (i % 10 === 0) console.log(`${i}/${n}`);
}
fs.writeFileSync(path.join(work, 'boxes.json'), JSON.stringify(out));
console.log(`wrote ${path.join(work, 'boxes.json')}`);
