// Drives a running whisperd with the official `openai` Node SDK, unchanged (its multipart encoding is
// the platform's FormData + fetch, not Python's), and validates every JSON body against OpenAI's
// published OpenAPI description with Ajv (JSON Schema 2020-12).
//
// usage: node tests/openai_client.mjs BASE_URL AUDIO_FILE SPEC
//   SPEC: ../shared/reference/openai-audio-openapi.json; AUDIO_FILE: jfk.wav (11 s)
// Needs tests/node/node_modules (`make node-deps`, which `make test` runs). Every check runs; the
// failures are listed at the end and the exit status is 1 if there is any. On success the last line
// is "node openai client: all ok".

import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const [base, audio, specPath] = process.argv.slice(2);
if (!base || !audio || !specPath) {
  console.error('usage: node tests/openai_client.mjs BASE_URL AUDIO_FILE SPEC');
  process.exit(2);
}

// The packages live in tests/node/node_modules, beside this script's folder.
const require = createRequire(path.join(path.dirname(fileURLToPath(import.meta.url)), 'node', 'package.json'));
let OpenAI, toFile, Ajv2020;
try {
  ({ default: OpenAI, toFile } = await import(require.resolve('openai')));
  ({ default: Ajv2020 } = await import(require.resolve('ajv/dist/2020')));
} catch (e) {
  console.error(`FAILED: ${e.message}\nrun \`make node-deps\` (npm ci in tests/node) first`);
  process.exit(2);
}

const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'test-key', maxRetries: 0, timeout: 120_000 });

const SPEC_ID = 'https://whisperd.invalid/openai-audio-openapi.json'; // a name only; nothing is fetched
const spec = JSON.parse(fs.readFileSync(specPath, 'utf8'));
// strict: false - the spec carries OpenAPI extensions (x-oaiMeta, x-stainless-const, optional) and
// formats (double, float, unixtime) that are annotations, not assertions.
const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: false });
ajv.addSchema({ ...spec, $id: SPEC_ID });

class Failed extends Error {}
class Skipped extends Error {}

function check(cond, what) {
  if (!cond) throw new Failed(what);
}

function validate(body, name) {
  check(name in spec.components.schemas, `no schema ${name} in the spec`);
  const v = ajv.getSchema(`${SPEC_ID}#/components/schemas/${name}`);
  if (!v(body)) {
    const errs = v.errors.slice(0, 5).map((e) => `at ${e.instancePath || '/'}: ${e.message}`);
    throw new Failed(`${name}: ${errs.join('; ')}`);
  }
}

const failures = [];
async function test(name, fn) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    if (e instanceof Skipped) {
      console.log(`skip ${name}: ${e.message}`);
      return;
    }
    const msg = e instanceof Failed ? e.message : `${e?.constructor?.name}: ${e?.message}\n${e?.stack}`;
    failures.push(`${name}: ${msg.split('\n')[0]}`);
    console.log(`FAIL ${name}: ${msg}`);
  }
}

// A fresh upload per request: a read stream for most, toFile for some, so both paths are exercised.
const stream = () => fs.createReadStream(audio);
const file = () => toFile(fs.readFileSync(audio), path.basename(audio), { type: 'audio/wav' });

async function transcribe(params) {
  return client.audio.transcriptions.create({ model: 'whisper-1', file: stream(), ...params }).withResponse();
}

function isJson(response) {
  const ct = response.headers.get('content-type') || '';
  check(ct.includes('application/json'), `content-type ${ct}`);
}

async function expect400(what, params, { param, message } = {}) {
  let err;
  try {
    await client.audio.transcriptions.create({ model: 'whisper-1', file: stream(), ...params });
  } catch (e) {
    err = e;
  }
  check(err, `${what}: succeeded`);
  check(err instanceof OpenAI.BadRequestError && err.status === 400, `${what}: expected 400, got ${err}`);
  // The SDK hands back the body's `error` member as err.error; the whole body is an ErrorResponse.
  validate({ error: err.error }, 'ErrorResponse');
  if (message) check(err.error.message.includes(message), `${what}: message ${JSON.stringify(err.error.message)}`);
  if (param) check((err.error.param || '').includes(param), `${what}: param ${JSON.stringify(err.error.param)}, not ${param}`);
}

const isDurationUsage = (u) => !!u && u.type === 'duration' && u.seconds === 11 && Object.keys(u).length === 2;

await test('json (createReadStream)', async () => {
  const { data, response } = await transcribe({});
  isJson(response);
  check(data.text.includes('fellow Americans'), `json: ${JSON.stringify(data.text)}`);
  validate(data, 'CreateTranscriptionResponseJson');
  check(!('logprobs' in data), 'logprobs without include[]=logprobs');
});

await test('json (toFile)', async () => {
  const t = await client.audio.transcriptions.create({ model: 'whisper-1', file: await file() });
  check(t.text.includes('fellow Americans'), `json: ${JSON.stringify(t.text)}`);
  validate(t, 'CreateTranscriptionResponseJson');
});

await test('json usage ', async () => {
  const { data } = await transcribe({ response_format: 'json' });
  check(isDurationUsage(data.usage), `usage: ${JSON.stringify(data.usage)}`);
});

await test('text', async () => {
  const text = await client.audio.transcriptions.create({ model: 'whisper-1', file: stream(), response_format: 'text' });
  check(typeof text === 'string' && text.includes('your country'), `text: ${JSON.stringify(text)}`);
});

await test('srt', async () => {
  const srt = await client.audio.transcriptions.create({ model: 'whisper-1', file: await file(), response_format: 'srt' });
  check(typeof srt === 'string' && srt.startsWith('1\n00:00:00,000 --> '), `srt: ${JSON.stringify(srt)}`);
});

await test('vtt', async () => {
  const vtt = await client.audio.transcriptions.create({ model: 'whisper-1', file: stream(), response_format: 'vtt' });
  check(typeof vtt === 'string' && vtt.startsWith('WEBVTT'), `vtt: ${JSON.stringify(vtt)}`);
});

await test('verbose_json segment', async () => {
  const { data: v, response } = await transcribe({
    response_format: 'verbose_json', timestamp_granularities: ['segment'], language: 'en', temperature: 0,
    prompt: 'JFK inaugural address.',
  });
  isJson(response);
  check(v.language === 'english' && v.duration === 11.0, `verbose_json: ${v.language} ${v.duration}`);
  check(v.segments?.length >= 1 && v.segments[0].start === 0 && v.segments.at(-1).end > 5, `segments: ${JSON.stringify(v.segments)}`);
  validate(v, 'CreateTranscriptionResponseVerboseJson');
});

await test('verbose_json usage ', async () => {
  const { data: v } = await transcribe({ response_format: 'verbose_json' });
  validate(v, 'CreateTranscriptionResponseVerboseJson');
  check(isDurationUsage(v.usage), `usage: ${JSON.stringify(v.usage)}`);
});

await test('verbose_json word', async () => {
  const { data: v } = await transcribe({ response_format: 'verbose_json', timestamp_granularities: ['word'] });
  check(v.words?.length >= 20 && v.words[0].word === 'And', `words: ${JSON.stringify(v.words)}`);
  check(v.words.every((w) => w.start <= w.end) && v.words.at(-1).end <= 11.0, 'word times');
  check(!v.segments?.length, 'segments without being asked');
  validate(v, 'CreateTranscriptionResponseVerboseJson');
});

await test('verbose_json word+segment', async () => {
  const { data: v } = await transcribe({ response_format: 'verbose_json', timestamp_granularities: ['word', 'segment'] });
  check(v.words?.length && v.segments?.length && v.segments[0].end >= v.words[0].end, 'words+segments');
  validate(v, 'CreateTranscriptionResponseVerboseJson');
});

await test('include[]=logprobs ', async () => {
  const { data } = await transcribe({ response_format: 'json', include: ['logprobs'] });
  validate(data, 'CreateTranscriptionResponseJson');
  const lp = data.logprobs;
  check(Array.isArray(lp) && lp.length >= 10, `logprobs: ${JSON.stringify(lp)}`);
  for (const item of lp) {
    validate(item, 'LogProbProperties');
    check(item.logprob <= 0, `logprob > 0: ${JSON.stringify(item)}`);
    check(Buffer.from(item.bytes).equals(Buffer.from(item.token, 'utf8')), `bytes do not spell the token: ${JSON.stringify(item)}`);
  }
  const joined = lp.map((i) => i.token).join('');
  check(joined.trim() === data.text.trim(), `tokens spell ${JSON.stringify(joined)}, text is ${JSON.stringify(data.text)}`);
});

await test('languages=[en] accepted', async () => {
  const { data } = await transcribe({ response_format: 'json', languages: ['en'] });
  check(data.text.includes('fellow Americans'), `languages=[en]: ${JSON.stringify(data.text)}`);
  validate(data, 'CreateTranscriptionResponseJson');
});

await test('languages=[xx] -> 400 ', async () => {
  await expect400('languages=[xx]', { languages: ['xx'] }, { param: 'languages' });
});

await test('keywords=[Kennedy]', async () => {
  const { data } = await transcribe({ response_format: 'json', keywords: ['Kennedy'] });
  check(data.text.includes('fellow Americans'), `keywords: ${JSON.stringify(data.text)}`);
  validate(data, 'CreateTranscriptionResponseJson');
});

await test('translation json', async () => {
  const { data, response } = await client.audio.translations.create({ model: 'whisper-1', file: stream() }).withResponse();
  isJson(response);
  check(data.text.includes('country'), `translation: ${JSON.stringify(data.text)}`);
  validate(data, 'CreateTranslationResponseJson');
});

await test('translation verbose_json', async () => {
  const t = await client.audio.translations.create({ model: 'whisper-1', file: await file(), response_format: 'verbose_json' });
  check(t.language === 'english' && t.duration === 11.0 && t.segments?.length, `translation verbose_json: ${JSON.stringify(t).slice(0, 300)}`);
  validate(t, 'CreateTranslationResponseVerboseJson');
});

await test('models list', async () => {
  const { data: page, response } = await client.models.list().withResponse();
  isJson(response);
  const ids = page.data.map((m) => m.id);
  check(ids.includes('whisper-tiny.en'), `models: ${ids}`);
  validate(page.body, 'ListModelsResponse'); // the page keeps the response body as it came
});

await test('models list has whisper-1 ', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m);
  const m = ids.find((x) => x.id === 'whisper-1');
  check(m && m.object === 'model', `no whisper-1 Model in ${ids.map((x) => x.id)}`);
});

await test('GET /v1/models/{id}', async () => {
  let m;
  try {
    m = await client.models.retrieve('whisper-1');
  } catch (e) {
    if (e instanceof OpenAI.NotFoundError) throw new Skipped('not served (404)');
    throw e;
  }
  validate(m, 'Model');
  check(m.id === 'whisper-1', `id ${m.id}`);
});

await test('non-audio upload -> 400', async () => {
  await expect400('non-audio upload', { file: await toFile(Buffer.from('not audio'), 'x.wav') },
    { param: 'file', message: 'not a recognised audio file' });
});

await test('unknown option value -> 400', async () => {
  await expect400('response_format=bogus', { response_format: 'bogus' }, { param: 'response_format' });
  await expect400('timestamp_granularities=[sentence]', { response_format: 'verbose_json', timestamp_granularities: ['sentence'] },
    { param: 'timestamp_granularities' });
});

if (failures.length) {
  console.error(`FAILED:\n${failures.map((f) => `  ${f}`).join('\n')}`);
  process.exit(1);
}
console.log('node openai client: all ok');
