// Unit tests of the JavaScript client with Node's test runner:
//   node --test clients/js/test/
// A fake WebSocket and fake timers: no network, no real time.

import { test } from "node:test";
import assert from "node:assert/strict";

import { ConnectionClosed, KiwiClient, KiwiError, backoffDelay, readable } from "../kiwi.js";

class FakeSocket {
  static all = [];

  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = null;
    FakeSocket.all.push(this);
  }

  send(text) {
    this.sent.push(JSON.parse(text));
  }

  close(code) {
    this.closed = code;
    queueMicrotask(() => this.onclose?.({ code, reason: "" }));
  }

  // The server side:
  open() {
    this.onopen?.();
  }

  receive(message) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }

  reply(data) {
    this.receive({ type: "COMMAND_RESPONSE", data });
  }

  drop(code = 1006) {
    this.onclose?.({ code, reason: "" });
  }
}

function setup(options = {}) {
  FakeSocket.all = [];
  const timers = [];
  const client = new KiwiClient("ws://kiwi.test/", {
    WebSocket: FakeSocket,
    random: () => 0.5,
    setTimeout: (fn, delay) => {
      const timer = { fn, delay };
      timers.push(timer);
      return timer;
    },
    clearTimeout: (timer) => {
      timer.cancelled = true;
    },
    ...options,
  });
  const fire = () => {
    const timer = timers.shift();
    assert.ok(timer, "a timer is scheduled");
    timer.fn();
    return timer;
  };
  return { client, timers, fire, socket: () => FakeSocket.all.at(-1) };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

test("backoffDelay grows exponentially up to the maximum, less jitter", () => {
  const options = { minDelay: 100, maxDelay: 1000, jitter: 0.5, random: () => 0 };
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((a) => backoffDelay(a, options)), [100, 200, 400, 800, 1000, 1000]);
  assert.equal(backoffDelay(2, { ...options, random: () => 1 }), 200);
  assert.equal(backoffDelay(0, { ...options, jitter: 0 }), 100);
});

test("the token goes in the query string", () => {
  const { client, socket } = setup({ token: "a b&c" });
  client.connect();
  assert.equal(socket().url, "ws://kiwi.test/?access_token=a+b%26c");
});

test("subscribe resolves with SUBSCRIBE_OK and results reach the handler", async () => {
  const { client, socket } = setup();
  const results = [];
  client.on("result", (data) => results.push(data));
  client.connect();
  socket().open();
  const subscribed = client.subscribe("prices", { from: "earliest" });
  assert.deepEqual(socket().sent, [{ type: "SUBSCRIBE", sourceId: "prices", mode: "push", from: "earliest" }]);
  socket().reply({ type: "SUBSCRIBE_OK", sourceId: "prices" });
  assert.deepEqual(await subscribed, { type: "SUBSCRIBE_OK", sourceId: "prices" });
  socket().receive({ type: "RESULT", data: { sourceType: "kafka", sourceId: "prices", partition: 1, offset: 41, key: null, payload: "e30=" } });
  assert.equal(results.length, 1);
  assert.deepEqual(client.offsets("prices"), { 1: 41 });
});

test("a refused subscription rejects with KiwiError and is forgotten", async () => {
  const { client, socket } = setup();
  client.connect();
  socket().open();
  const subscribed = client.subscribe("nope");
  socket().reply({ type: "SUBSCRIBE_ERROR", sourceId: "nope", error: "source not found" });
  await assert.rejects(subscribed, (error) => error instanceof KiwiError && error.message === "source not found");
  assert.equal(client.subscriptions.has("nope"), false);
});

test("subscribe before the connection opens is sent once it does", async () => {
  const { client, socket } = setup();
  const subscribed = client.subscribe("counter");
  client.connect();
  assert.deepEqual(socket().sent, []);
  socket().open();
  assert.deepEqual(socket().sent, [{ type: "SUBSCRIBE", sourceId: "counter", mode: "push" }]);
  socket().reply({ type: "SUBSCRIBE_OK", sourceId: "counter" });
  await subscribed;
});

test("after a drop it reconnects with backoff and resumes from the last offsets + 1", async () => {
  const { client, socket, fire, timers } = setup({ minDelay: 100, maxDelay: 1000, jitter: 0.5 });
  const states = [];
  client.on("state", (state) => states.push(state));
  client.connect();
  const first = socket();
  first.open();
  client.subscribe("prices");
  first.reply({ type: "SUBSCRIBE_OK", sourceId: "prices" });
  client.subscribe("counter");
  first.reply({ type: "SUBSCRIBE_OK", sourceId: "counter" });
  for (const [partition, offset] of [[0, 5], [1, 9], [0, 6]]) {
    first.receive({ type: "RESULT", data: { sourceType: "kafka", sourceId: "prices", partition, offset } });
  }
  const pending = client.request("counter", 1);
  first.drop();
  await assert.rejects(pending, ConnectionClosed);
  assert.equal(client.state, "waiting");
  assert.equal(timers[0].delay, 75); // 100 less half of the 50% jitter
  fire();
  const second = socket();
  assert.notEqual(second, first);
  second.drop(); // refused: the next delay doubles
  assert.equal(timers[0].delay, 150);
  fire();
  const third = socket();
  third.open();
  assert.deepEqual(third.sent, [
    { type: "SUBSCRIBE", sourceId: "prices", mode: "push", from: { offsets: { 0: 7, 1: 10 } } },
    { type: "SUBSCRIBE", sourceId: "counter", mode: "push" },
  ]);
  assert.equal(client.attempt, 0);
  assert.deepEqual(states, ["connecting", "open", "waiting", "connecting", "waiting", "connecting", "open"]);
});

test("a pull subscription renews its unused credit after reconnecting", async () => {
  const { client, socket, fire } = setup();
  client.connect();
  socket().open();
  client.subscribe("counter", { mode: "pull" });
  socket().reply({ type: "SUBSCRIBE_OK", sourceId: "counter" });
  await tick();
  client.request("counter", 5).catch(() => {});
  socket().receive({ type: "RESULT", data: { sourceType: "counter", sourceId: "counter", count: 1 } });
  socket().receive({ type: "RESULT", data: { sourceType: "counter", sourceId: "counter", count: 2 } });
  socket().drop();
  fire();
  socket().open();
  socket().reply({ type: "SUBSCRIBE_OK", sourceId: "counter" });
  await tick();
  assert.deepEqual(socket().sent, [
    { type: "SUBSCRIBE", sourceId: "counter", mode: "pull" },
    { type: "REQUEST", sourceId: "counter", n: 3 },
  ]);
});

test("close() ends for good: no reconnect", async () => {
  const { client, socket, timers } = setup();
  client.connect();
  socket().open();
  client.close();
  await tick();
  assert.equal(socket().closed, 1000);
  assert.equal(client.state, "closed");
  assert.equal(timers.length, 0);
});

test("SUBSCRIPTION_CLOSED forgets the subscription; notices reach the handler", () => {
  const { client, socket } = setup();
  const notices = [];
  client.on("notice", (data) => notices.push(data));
  client.connect();
  socket().open();
  client.subscribe("short");
  socket().reply({ type: "SUBSCRIBE_OK", sourceId: "short" });
  socket().receive({ type: "NOTICE", data: { type: "SUBSCRIPTION_CLOSED", sourceId: "short", message: "done" } });
  assert.equal(notices.length, 1);
  assert.equal(client.subscriptions.has("short"), false);
});

test("unsubscribe resolves with UNSUBSCRIBE_OK and stops renewal", async () => {
  const { client, socket, fire } = setup();
  client.connect();
  socket().open();
  await Promise.all([client.subscribe("c"), socket().reply({ type: "SUBSCRIBE_OK", sourceId: "c" })]);
  const done = client.unsubscribe("c");
  socket().reply({ type: "UNSUBSCRIBE_OK", sourceId: "c" });
  assert.equal((await done).type, "UNSUBSCRIBE_OK");
  socket().drop();
  fire();
  socket().open();
  assert.deepEqual(socket().sent, []);
});

test("readable renders each format", () => {
  const b64 = (text) => Buffer.from(text).toString("base64");
  assert.deepEqual(readable({ payload: b64('{"a":1}') }), { kind: "json", value: { a: 1 } });
  assert.deepEqual(readable({ payload: b64("hello") }), { kind: "text", value: "hello" });
  assert.deepEqual(readable({ payload: "/wA=" }), { kind: "hex", value: "ff 00" });
  assert.deepEqual(readable({ payload: null }), { kind: "null", value: null });
  assert.deepEqual(readable({ payload: { a: 1 } }, "payload", "json"), { kind: "json", value: { a: 1 } });
  assert.deepEqual(readable({ payload: "text" }, "payload", "json"), { kind: "json", value: "text" });
  assert.deepEqual(readable({ payload: "plain" }, "payload", "utf8"), { kind: "text", value: "plain" });
  assert.deepEqual(readable({ payload: "/wA=", payloadEncoding: "base64" }, "payload", "utf8"), { kind: "hex", value: "ff 00" });
  assert.deepEqual(readable({ key: "k1" }, "key", "utf8"), { kind: "text", value: "k1" });
});

test("on() rejects unknown events and returns a remover", () => {
  const { client, socket } = setup();
  assert.throws(() => client.on("nope", () => {}), /unknown event/);
  const seen = [];
  const off = client.on("open", () => seen.push("open"));
  off();
  client.connect();
  socket().open();
  assert.deepEqual(seen, []);
});
