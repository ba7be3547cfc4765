/* signalbus.js: EventSource with fresh tokens, resume, de-duplication and topic dispatch.
 *
 *   const bus = new SignalBus({url, tokenUrl, topics: ["shop.order.42.*"]});
 *   bus.on("shop.order.*.updated", (event) => ...);   // the CloudEvent, parsed
 *   bus.on("signalbus.reset", (event) => ...);        // events were missed: refetch state
 *   bus.close();
 *
 * url: a stream URL with its token ({% signalbus_url %}), used for the first connection;
 * tokenUrl: signalbus's token view; each reconnect the browser cannot make by itself
 * (the worker refused or closed the stream: an expired token gets 401) fetches a fresh
 * token there and resumes after the last event seen (lastEventId=).
 * Plain ES2017, no dependency; in node, require() it for topicMatches. */
(function (root) {
  "use strict";

  // AMQP topic-exchange rules, as signalbus.topics.matches: '*' is exactly one word,
  // '#' zero or more; a run of '#' matches what one '#' does.
  function topicMatches(pattern, topic) {
    const words = [];
    for (const word of pattern.split(".")) {
      if (!(word === "#" && words[words.length - 1] === "#")) words.push(word);
    }
    const closure = (states) => {
      const out = new Set();
      for (let state of states) {
        out.add(state);
        while (words[state] === "#") out.add(++state);
      }
      return out;
    };
    let states = closure([0]);
    for (const word of topic.split(".")) {
      const next = [];
      for (const state of states) {
        const expected = words[state];
        if (state === words.length) continue;
        if (expected === "#") next.push(state);
        else if ((expected === "*" && word !== "") || expected === word) next.push(state + 1);
      }
      states = closure(next);
      if (!states.size) return false;
    }
    return states.has(words.length);
  }

  const RESET = "signalbus.reset";

  class SignalBus {
    constructor({url, tokenUrl, topics, withCredentials = false, maxSeen = 1000, onerror} = {}) {
      if (!url && !tokenUrl) throw new Error("SignalBus needs a url, a tokenUrl, or both");
      this.url = url || null;
      this.tokenUrl = tokenUrl || null;
      this.topics = topics || (url ? new URL(url, location.href).searchParams.getAll("topic") : []);
      if (!this.url && !this.topics.length) throw new Error("SignalBus needs its topics");
      this.withCredentials = withCredentials;
      this.maxSeen = maxSeen;
      this.onerror = onerror || ((error) => console.warn("signalbus:", error.message));
      this.handlers = [];
      this.seen = new Set();
      this.lastEventId = "";
      this.source = null;
      this.closed = false;
      this.delay = 1000;
      this.timer = null;
      if (this.url) this._open(this.url);
      else this._renew();
    }

    on(pattern, fn) {
      this.handlers.push([pattern, fn]);
      return this;
    }

    close() {
      this.closed = true;
      clearTimeout(this.timer);
      if (this.source) this.source.close();
      this.source = null;
    }

    _open(url) {
      if (this.closed) return;
      const target = new URL(url, location.href);
      if (this.lastEventId) target.searchParams.set("lastEventId", this.lastEventId);
      const source = (this.source = new EventSource(target.href, {withCredentials: this.withCredentials}));
      source.onopen = () => { this.delay = 1000; };
      source.onmessage = (message) => this._receive(message);
      source.onerror = () => {
        // CONNECTING: the browser retries by itself, with Last-Event-ID. CLOSED: the worker
        // refused (an expired token gets 401): get a fresh token and resume from here.
        if (source.readyState === EventSource.CLOSED && source === this.source) {
          source.close();
          this.source = null;
          this._later();
        }
      };
    }

    _later() {
      if (this.closed) return;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this._renew(), this.delay);
      this.delay = Math.min(this.delay * 2, 30000);
    }

    async _renew() {
      if (this.closed) return;
      if (!this.tokenUrl) {
        this.onerror(new Error("the stream was refused and there is no tokenUrl to renew it"));
        return;
      }
      const query = new URLSearchParams(this.topics.map((topic) => ["topic", topic]));
      const sep = this.tokenUrl.includes("?") ? "&" : "?";
      let response;
      try {
        response = await fetch(this.tokenUrl + sep + query, {
          credentials: "same-origin",
          headers: {Accept: "application/json"},
          cache: "no-store",
        });
      } catch (error) {
        this.onerror(error);
        this._later();  // offline, or the site is down: try again
        return;
      }
      if (!response.ok) {
        const error = new Error("token view answered HTTP " + response.status);
        this.onerror(error);
        // 400/401/403 will not change by retrying (logged out, not allowed): stop.
        if (response.status >= 500 || response.status === 429) this._later();
        return;
      }
      const body = await response.json();
      this._open(body.url);
    }

    _receive(message) {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      if (message.lastEventId) this.lastEventId = message.lastEventId;
      if (event.type === RESET) {
        this._dispatch(RESET, event, (pattern) => pattern === RESET);
        return;
      }
      const id = message.lastEventId || event.id;
      if (id) {
        if (this.seen.has(id)) return;  // at-least-once delivery: each id once
        this.seen.add(id);
        if (this.seen.size > this.maxSeen) this.seen.delete(this.seen.values().next().value);
      }
      if (typeof event.topic === "string") {
        this._dispatch(event.topic, event, (pattern) => topicMatches(pattern, event.topic));
      }
    }

    _dispatch(topic, event, wanted) {
      for (const [pattern, fn] of this.handlers.slice()) {
        if (!wanted(pattern)) continue;
        try {
          fn(event);
        } catch (error) {
          setTimeout(() => { throw error; });  // report it, keep delivering to the others
        }
      }
    }
  }

  SignalBus.topicMatches = topicMatches;
  if (typeof module !== "undefined" && module.exports) {
    module.exports = {SignalBus, topicMatches};
  } else {
    root.SignalBus = SignalBus;
  }
})(typeof globalThis !== "undefined" ? globalThis : this);
