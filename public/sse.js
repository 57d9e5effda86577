/**
 * Server-Sent Events read from a fetch response. EventSource cannot POST a form nor send an
 * Authorization header, so the page reads the text/event-stream format itself, following the WHATWG
 * HTML standard's "Interpreting an event stream".
 */

/** Fed text as it arrives, cut anywhere (mid-line, mid-"\r\n"), returns the events completed so far. */
export class SseParser {
  #buffer = '';
  #type = '';
  #data = [];
  #lastId = '';

  /** @returns {{ event: string, data: string, id: string }[]} */
  feed(text) {
    this.#buffer += text;
    const events = [];
    // A line ends at "\r\n", "\n" or "\r"; a "\r" that ends the buffer waits, as its "\n" may be in the next chunk.
    const lineEnd = /\r\n|\n|\r(?!$)/g;
    let start = 0;
    for (let match = lineEnd.exec(this.#buffer); match; match = lineEnd.exec(this.#buffer)) {
      this.#line(this.#buffer.slice(start, match.index), events);
      start = lineEnd.lastIndex;
    }
    this.#buffer = this.#buffer.slice(start);
    return events;
  }

  #line(line, events) {
    if (line === '') {
      // A blank line ends an event; one without data lines is dropped, as the standard says.
      if (this.#data.length > 0) events.push({ event: this.#type || 'message', data: this.#data.join('\n'), id: this.#lastId });
      this.#type = '';
      this.#data = [];
      return;
    }
    // A comment, such as the server's ": heartbeat" that keeps a quiet stream open.
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    const value = colon === -1 ? '' : line.slice(colon + (line[colon + 1] === ' ' ? 2 : 1));
    if (field === 'event') this.#type = value;
    else if (field === 'data') this.#data.push(value);
    else if (field === 'id' && !value.includes('\0')) this.#lastId = value;
  }
}

/**
 * The events of a response body as they arrive, `data` parsed as JSON. Leaving the loop early, or an
 * abort of the fetch, cancels the body, which closes the connection.
 */
export async function* readEvents(body, signal) {
  // TextDecoderStream keeps a character split across chunks whole, and drops a leading BOM.
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  // The server was reached and answered: a read that fails is a connection lost, not a server that cannot be reached.
  const read = () =>
    reader.read().catch((error) => {
      if (signal?.aborted) throw error;
      throw new Error(`the connection to the server was lost mid-stream (${error.message})`);
    });
  try {
    for (let chunk = await read(); !chunk.done; chunk = await read()) {
      for (const event of parser.feed(chunk.value)) {
        // Events that came in the same chunk are dropped too once the caller aborts: stop means now.
        signal?.throwIfAborted();
        yield { ...event, data: JSON.parse(event.data) };
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
