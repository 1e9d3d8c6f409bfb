// Kiwi's JavaScript client: one ES module, no dependencies, for browsers
// and Node (20+, with a WebSocket implementation: Node 22's global one,
// `node --experimental-websocket` on Node 20, or the `ws` package passed as
// the `WebSocket` option).
//
//   import { KiwiClient } from "/kiwi.js";   // served by Kiwi itself
//   const kiwi = new KiwiClient("ws://127.0.0.1:8000/", { token });
//   kiwi.on("result", (data) => console.log(data));
//   kiwi.connect();
//   await kiwi.subscribe("prices", { from: "earliest" });
//
// Features: push and pull subscriptions, REQUEST, handlers for results,
// notices, replies and connection state, automatic reconnect with
// exponential backoff and jitter, re-subscribe after reconnect, and resume
// of Kafka subscriptions from the last seen offsets + 1 (see
// docs/clients.md and docs/protocol.md).

/** A command the server refused (SUBSCRIBE_ERROR, REQUEST_ERROR, ...). */
export class KiwiError extends Error {
  constructor(reply) {
    super(reply.error);
    this.name = "KiwiError";
    this.reply = reply;
    this.sourceId = reply.sourceId;
    this.type = reply.type;
  }
}

/** The connection closed before the server answered a command. */
export class ConnectionClosed extends Error {
  constructor() {
    super("connection closed before the reply arrived");
    this.name = "ConnectionClosed";
  }
}

const EVENTS = ["result", "notice", "reply", "error", "open", "close", "state"];

/**
 * The delay before reconnect attempt number `attempt` (0-based):
 * exponential from `minDelay` up to `maxDelay`, minus up to `jitter` of it
 * at random so that many clients do not reconnect in step.
 */
export function backoffDelay(attempt, { minDelay = 500, maxDelay = 30000, jitter = 0.5, random = Math.random } = {}) {
  const base = Math.min(maxDelay, minDelay * 2 ** Math.min(attempt, 30));
  return Math.round(base * (1 - jitter * random()));
}

/** Decode standard base64 into bytes (browsers and Node alike). */
export function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/**
 * A Kafka result's payload (or key, with field "key") as the most readable
 * value: {kind: "json" | "text" | "hex" | "null", value}. `format` is the
 * source's format for that field ("base64", the default, "utf8" or "json").
 */
export function readable(data, field = "payload", format = "base64") {
  const value = data[field];
  if (value === null || value === undefined) return { kind: "null", value: null };
  if (typeof value !== "string") return { kind: "json", value };
  const encoding = data[field === "payload" ? "payloadEncoding" : "keyEncoding"];
  let text = value;
  if (encoding === "base64" || format === "base64") {
    const bytes = fromBase64(value);
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      return { kind: "hex", value: Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ") };
    }
  } else if (format === "json") {
    return { kind: "json", value };
  }
  try {
    const parsed = JSON.parse(text);
    if (parsed !== null && typeof parsed === "object") return { kind: "json", value: parsed };
  } catch {
    // not JSON: plain text
  }
  return { kind: "text", value: text };
}

export class KiwiClient {
  /**
   * @param {string} url  ws:// or wss:// URL of Kiwi's endpoint
   * @param {object} options
   *   token: sent as the query parameter `tokenParam` (default "access_token")
   *   WebSocket: the WebSocket class (default: globalThis.WebSocket)
   *   reconnect: reconnect after the connection drops (default true)
   *   minDelay, maxDelay, jitter: backoff in ms (500, 30000, 0.5)
   *   random, setTimeout, clearTimeout: for tests
   */
  constructor(url, options = {}) {
    this.options = { reconnect: true, minDelay: 500, maxDelay: 30000, jitter: 0.5, tokenParam: "access_token", ...options };
    this.url = url;
    this.state = "idle";
    this.attempt = 0;
    this.subscriptions = new Map();
    this._handlers = Object.fromEntries(EVENTS.map((name) => [name, new Set()]));
    this._pending = [];
    this._socket = null;
    this._timer = null;
    this._closing = false;
  }

  /** Register `fn` for "result", "notice", "reply", "error", "open", "close" or "state"; returns a function that removes it. */
  on(name, fn) {
    if (!this._handlers[name]) throw new Error(`unknown event ${name}; expected one of ${EVENTS.join(", ")}`);
    this._handlers[name].add(fn);
    return () => this._handlers[name].delete(fn);
  }

  _emit(name, ...args) {
    for (const fn of this._handlers[name]) {
      try {
        fn(...args);
      } catch (error) {
        if (name !== "error") this._emit("error", error);
      }
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state);
  }

  /** Open the connection (and keep reopening it until close()). */
  connect() {
    this._closing = false;
    if (this._socket || this._timer) return;
    this._open();
  }

  _fullUrl() {
    if (!this.options.token) return this.url;
    const url = new URL(this.url);
    url.searchParams.set(this.options.tokenParam, this.options.token);
    return url.toString();
  }

  _open() {
    const WebSocketClass = this.options.WebSocket || globalThis.WebSocket;
    if (!WebSocketClass) throw new Error("no WebSocket implementation: pass options.WebSocket");
    this._setState("connecting");
    let socket;
    try {
      socket = new WebSocketClass(this._fullUrl());
    } catch (error) {
      this._emit("error", error);
      this._scheduleReconnect();
      return;
    }
    this._socket = socket;
    socket.onopen = () => {
      if (this._socket !== socket) return;
      this.attempt = 0;
      // Renew first: a handler that subscribes must not see its new
      // subscription sent twice.
      const renew = [...this.subscriptions.values()];
      this.state = "open";
      for (const subscription of renew) this._sendSubscribe(subscription, subscription.confirmed);
      this._emit("state", "open");
      this._emit("open");
    };
    socket.onmessage = (message) => {
      if (this._socket !== socket) return;
      this._receive(message.data);
    };
    socket.onerror = (event) => {
      if (this._socket === socket) this._emit("error", event?.error || new Error("WebSocket error"));
    };
    socket.onclose = (event) => {
      if (this._socket !== socket) return;
      this._socket = null;
      const pending = this._pending;
      this._pending = [];
      for (const entry of pending) entry.reject(new ConnectionClosed());
      this._emit("close", { code: event?.code, reason: event?.reason });
      if (this._closing || !this.options.reconnect) {
        this._setState("closed");
      } else {
        this._scheduleReconnect();
      }
    };
  }

  _scheduleReconnect() {
    const delay = backoffDelay(this.attempt, this.options);
    this.attempt += 1;
    this._setState("waiting");
    const setTimer = this.options.setTimeout || globalThis.setTimeout;
    this._timer = setTimer(() => {
      this._timer = null;
      if (!this._closing) this._open();
    }, delay);
  }

  /** Close the connection for good (no reconnect). */
  close() {
    this._closing = true;
    if (this._timer) {
      (this.options.clearTimeout || globalThis.clearTimeout)(this._timer);
      this._timer = null;
    }
    if (this._socket) {
      this._socket.close(1000);
    } else {
      this._setState("closed");
    }
  }

  _receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch (error) {
      this._emit("error", error);
      return;
    }
    const data = message.data;
    if (message.type === "RESULT") {
      const subscription = this.subscriptions.get(data.sourceId);
      if (subscription) {
        if (data.sourceType === "kafka") subscription.offsets[data.partition] = data.offset;
        if (subscription.mode === "pull" && subscription.credits > 0) subscription.credits -= 1;
        subscription.received += 1;
      }
      this._emit("result", data);
    } else if (message.type === "NOTICE") {
      if (data.type === "SUBSCRIPTION_CLOSED") this.subscriptions.delete(data.sourceId);
      this._emit("notice", data);
    } else if (message.type === "COMMAND_RESPONSE") {
      const entry = this._pending.shift();
      this._emit("reply", data);
      if (entry) {
        if (data.type.endsWith("_ERROR")) entry.reject(new KiwiError(data));
        else entry.resolve(data);
      }
    } else if (message.type === "ERROR") {
      const entry = this._pending.shift();
      const error = new Error(data.error);
      this._emit("error", error);
      if (entry) entry.reject(error);
    }
  }

  _command(command) {
    return new Promise((resolve, reject) => {
      if (!this._socket || this.state !== "open") {
        reject(new ConnectionClosed());
        return;
      }
      this._pending.push({ resolve, reject, command });
      this._socket.send(JSON.stringify(command));
    });
  }

  /**
   * Subscribe to a source; resolves with SUBSCRIBE_OK, rejects with a
   * KiwiError. The subscription is remembered and renewed after every
   * reconnect, from the last seen offsets + 1 for Kafka sources.
   *
   * @param {object} options  mode: "push" | "pull"; from: "latest" |
   *   "earliest" | {timestamp: ms} | {offsets: {"0": 12}}
   */
  subscribe(sourceId, { mode = "push", from = undefined } = {}) {
    if (this.subscriptions.has(sourceId)) return Promise.reject(new Error(`already subscribed to ${sourceId}`));
    const subscription = { sourceId, mode, from, offsets: {}, credits: 0, received: 0, waiters: [], confirmed: false };
    this.subscriptions.set(sourceId, subscription);
    const result = new Promise((resolve, reject) => subscription.waiters.push({ resolve, reject }));
    if (this.state === "open") this._sendSubscribe(subscription);
    return result;
  }

  /** Where a renewed subscription should start: after the last seen offsets. */
  resumeFrom(sourceId) {
    const subscription = this.subscriptions.get(sourceId);
    if (!subscription) return undefined;
    const partitions = Object.keys(subscription.offsets);
    if (partitions.length === 0) return subscription.from;
    return { offsets: Object.fromEntries(partitions.map((p) => [p, subscription.offsets[p] + 1])) };
  }

  _sendSubscribe(subscription, renewal = false) {
    const socket = this._socket;
    const command = { type: "SUBSCRIBE", sourceId: subscription.sourceId, mode: subscription.mode };
    const from = this.resumeFrom(subscription.sourceId);
    if (from !== undefined && from !== "latest") command.from = from;
    this._command(command).then(
      (reply) => {
        subscription.confirmed = true;
        // Renew what the subscriber had asked for and not yet received.
        if (renewal && this._socket === socket && subscription.mode === "pull" && subscription.credits > 0) {
          this._command({ type: "REQUEST", sourceId: subscription.sourceId, n: subscription.credits }).catch(() => {});
        }
        const waiters = subscription.waiters.splice(0);
        for (const waiter of waiters) waiter.resolve(reply);
      },
      (error) => {
        if (error instanceof ConnectionClosed) return; // renewed on reconnect
        if (this.subscriptions.get(subscription.sourceId) === subscription) this.subscriptions.delete(subscription.sourceId);
        const waiters = subscription.waiters.splice(0);
        for (const waiter of waiters) waiter.reject(error);
        if (waiters.length === 0) this._emit("error", error);
      },
    );
  }

  /** Give a pull subscription `n` more credits; resolves with REQUEST_OK. */
  request(sourceId, n) {
    const subscription = this.subscriptions.get(sourceId);
    if (subscription) subscription.credits += n;
    return this._command({ type: "REQUEST", sourceId, n });
  }

  /** End a subscription; resolves with UNSUBSCRIBE_OK. */
  unsubscribe(sourceId) {
    const subscription = this.subscriptions.get(sourceId);
    this.subscriptions.delete(sourceId);
    if (subscription) for (const waiter of subscription.waiters.splice(0)) waiter.reject(new Error("unsubscribed"));
    return this._command({ type: "UNSUBSCRIBE", sourceId });
  }

  /** The last offset seen per partition of a Kafka subscription. */
  offsets(sourceId) {
    return { ...(this.subscriptions.get(sourceId)?.offsets || {}) };
  }
}
