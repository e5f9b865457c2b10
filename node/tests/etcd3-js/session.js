// One session of the npm `etcd3` client (on @grpc/grpc-js, a third HTTP/2 stack beside Go's
// and tonic's) against the endpoints given: KV, transactions, watch, leases, locks, elections,
// maintenance, and etcd's error texts as this client matches them. Prints one line per step
// and exits 1 at the first step whose answer is not etcd's.
//
//   node session.js http://127.0.0.1:12380[,http://...]
'use strict';

const assert = require('node:assert/strict');
const { Etcd3, EtcdLeaseInvalidError, GRPCOutOfRangeError } = require('etcd3');

const hosts = (process.argv[2] || 'http://127.0.0.1:12380').split(',');
const client = new Etcd3({ hosts });
const prefix = `etcd3-js/${process.pid}/`;
const key = (name) => prefix + name;

/**
 * A watcher of `builder`'s keys, listened to from before it connects (a replay may follow its
 * creation at once), once it is connected; `events(n)` resolves with its first n events.
 */
async function connected(builder) {
  const watcher = builder.watcher();
  const seen = [];
  const waiting = [];
  const take = (kind) => (kv, previous) => {
    seen.push({ kind, key: kv.key.toString(), value: kv.value.toString(), previous: previous ? previous.value.toString() : null });
    waiting.forEach((check) => check());
  };
  watcher.on('put', take('put'));
  watcher.on('delete', take('delete'));
  watcher.events = (count, ms = 10000) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`saw ${seen.length} of ${count} events`)), ms);
    const check = () => {
      if (seen.length >= count) {
        clearTimeout(timer);
        resolve(seen.slice(0, count));
      }
    };
    waiting.push(check);
    check();
  });
  await new Promise((resolve, reject) => {
    watcher.once('connected', resolve);
    watcher.once('error', reject);
  });
  return watcher;
}

const steps = [
  ['put and get', async () => {
    await client.put(key('a')).value('1');
    await client.put(key('b')).value('2');
    assert.equal(await client.get(key('a')).string(), '1');
    assert.equal(await client.get(key('missing')).string(), null);
  }],
  ['prefix listing, count, sort', async () => {
    assert.deepEqual(await client.getAll().prefix(prefix).strings(), { [key('a')]: '1', [key('b')]: '2' });
    assert.equal(await client.getAll().prefix(prefix).count(), 2);
    const keys = await client.getAll().prefix(prefix).sort('Key', 'Descend').keys();
    assert.deepEqual(keys, [key('b'), key('a')]);
  }],
  ['transactions', async () => {
    const hit = await client.if(key('a'), 'Value', '==', '1').then(client.put(key('a')).value('3')).commit();
    assert.equal(hit.succeeded, true);
    const miss = await client.if(key('a'), 'Value', '==', '1').then(client.put(key('a')).value('4'))
      .else(client.get(key('a'))).commit();
    assert.equal(miss.succeeded, false);
    assert.equal(miss.responses[0].response_range.kvs[0].value.toString(), '3');
    assert.ok(Number(miss.header.revision) > 0, 'the header names the revision');
  }],
  ['delete with previous values', async () => {
    const deleted = await client.delete().key(key('b')).getPrevious();
    assert.equal(deleted.length, 1);
    assert.equal(deleted[0].value.toString(), '2');
  }],
  ['watch with previous values', async () => {
    const watcher = await connected(client.watch().key(key('w')).withPreviousKV());
    const seen = watcher.events(3);
    await client.put(key('w')).value('x');
    await client.put(key('w')).value('y');
    await client.delete().key(key('w'));
    assert.deepEqual((await seen).map((e) => [e.kind, e.value, e.previous]), [
      ['put', 'x', null], ['put', 'y', 'x'], ['delete', '', 'y'],
    ]);
    await watcher.cancel();
  }],
  ['watch replays history from a revision', async () => {
    const from = (await client.put(key('h')).value('1')).header.revision;
    await client.put(key('h')).value('2');
    const watcher = await connected(client.watch().key(key('h')).startRevision(from));
    assert.deepEqual((await watcher.events(2)).map((e) => e.value), ['1', '2']);
    await watcher.cancel();
  }],
  ['leases: grant, attach, keep alive, revoke', async () => {
    const lease = client.lease(10, { autoKeepAlive: false });
    await lease.put(key('leased')).value('held');
    const answer = await lease.keepaliveOnce();
    assert.ok(Number(answer.TTL) > 0, 'renewed');
    assert.equal(await client.get(key('leased')).string(), 'held');
    await lease.revoke();
    assert.equal(await client.get(key('leased')).string(), null, 'the key went with its lease');
  }],
  ['a lease that does not exist is etcd\'s error', async () => {
    await assert.rejects(client.leaseClient.leaseRevoke({ ID: '123456789' }), EtcdLeaseInvalidError);
  }],
  ['a compacted revision is etcd\'s error', async () => {
    const old = (await client.put(key('c')).value('1')).header.revision;
    const now = (await client.put(key('c')).value('2')).header.revision;
    await client.kv.compact({ revision: now });
    await assert.rejects(client.kv.range({ key: Buffer.from(key('c')), revision: old }), (e) =>
      e instanceof GRPCOutOfRangeError && /required revision has been compacted/.test(e.message));
  }],
  ['locks', async () => {
    const inside = await client.lock(key('lock')).ttl(5).do(async () => 'inside');
    assert.equal(inside, 'inside');
  }],
  ['elections', async () => {
    const election = client.election(key('election'), 5);
    const campaign = election.campaign('candidate-1');
    await campaign.wait();
    assert.equal(await election.leader(), 'candidate-1');
    await campaign.resign();
  }],
  ['maintenance status', async () => {
    const status = await client.maintenance.status();
    assert.match(status.version, /^3\./);
    assert.ok(status.leader !== '0', 'a leader is named');
  }],
  ['members', async () => {
    const { members } = await client.cluster.memberList({});
    assert.equal(members.length, hosts.length);
  }],
];

(async () => {
  for (const [name, step] of steps) {
    try {
      await step();
      console.log(`ok ${name}`);
    } catch (error) {
      console.log(`FAILED ${name}: ${error && error.stack ? error.stack : error}`);
      process.exitCode = 1;
      break;
    }
  }
  await client.delete().prefix(prefix).catch(() => {});
  client.close();
  // A watch or a lease left open by a failed step would keep the process alive.
  process.exit();
})();
