// An independent producer and changelog reader for the integration tests:
// kafkajs speaks the Kafka protocol, avsc encodes and decodes Avro from the
// schema files themselves. Nothing here shares code with ruvector.
//
// usage: node kafkajs_client.js BOOTSTRAP COLLECTION SCHEMAS_DIR COUNT DIM
// Publishes COUNT records (ids kj-0..), the last one Confluent-framed
// (schema id 1), then reads <COLLECTION>.changelog from the beginning until
// every id is there and checks each change's vector. Prints one JSON line.
'use strict';
const fs = require('fs');
const path = require('path');
const avro = require('avsc');
const { Kafka, logLevel } = require('kafkajs');

const [bootstrap, collection, schemasDir, countArg, dimArg] = process.argv.slice(2);
const count = Number(countArg);
const dim = Number(dimArg);
const load = (f) => avro.Type.forSchema(JSON.parse(fs.readFileSync(path.join(schemasDir, f), 'utf8')));
const vectorType = load('vector_record.avsc');
const changeType = load('changelog_record.avsc');

// A small deterministic generator, so the Python side can recompute the vectors.
function vectorFor(i) {
  const v = [];
  for (let d = 0; d < dim; d++) v.push(Math.fround(((i * 31 + d * 7) % 97) / 8 - 6));
  return v;
}

async function main() {
  const kafka = new Kafka({ clientId: 'rv-kafkajs-check', brokers: bootstrap.split(','), logLevel: logLevel.WARN });
  const producer = kafka.producer({ allowAutoTopicCreation: false });
  await producer.connect();
  const messages = [];
  for (let i = 0; i < count; i++) {
    const id = `kj-${i}`;
    let value = vectorType.toBuffer({ id, op: 'UPSERT', vector: vectorFor(i),
      metadata: JSON.stringify({ client: 'kafkajs', i }), event_time: null });
    if (i === count - 1) {
      const header = Buffer.alloc(5);
      header.writeUInt32BE(1, 1); // magic byte 0, schema id 1
      value = Buffer.concat([header, value]);
    }
    messages.push({ key: id, value });
  }
  await producer.send({ topic: `${collection}.vectors`, messages });
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: `rv-kafkajs-check-${process.pid}` });
  await consumer.connect();
  await consumer.subscribe({ topic: `${collection}.changelog`, fromBeginning: true });
  const seen = new Map();
  const problems = [];
  let markers = 0;
  const done = new Promise((resolve) => {
    consumer.run({
      eachMessage: async ({ message }) => {
        // Ingest's position markers (schemas/position_marker.avsc) share the topic: told by their header.
        const kind = message.headers && message.headers['rv-kind'];
        if (kind && kind.toString() === 'position') {
          markers++;
          return;
        }
        const ch = changeType.fromBuffer(message.value);
        if (message.key.toString() !== ch.id) problems.push(`key ${message.key} != id ${ch.id}`);
        if (!ch.id.startsWith('kj-')) return;
        const want = vectorFor(Number(ch.id.slice(3)));
        const got = ch.vector || [];
        if (got.length !== dim || got.some((x, d) => x !== want[d])) problems.push(`${ch.id}: vector differs`);
        seen.set(ch.id, ch);
        if (seen.size === count) resolve();
      },
    });
  });
  const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error(
    `changelog has ${seen.size} of ${count} ids after 90 s`)), 90000));
  try {
    await Promise.race([done, timeout]);
  } finally {
    await consumer.disconnect();
  }
  console.log(JSON.stringify({ produced: count, changelog_ids: seen.size, markers, problems }));
  process.exit(problems.length ? 1 : 0);
}

main().catch((e) => {
  console.log(JSON.stringify({ error: String(e && e.message || e) }));
  process.exit(1);
});
