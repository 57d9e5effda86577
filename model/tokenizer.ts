/**
 * Byte-level UTF-8 tokenizer (DESIGN.md section 3): a token is one byte of the UTF-8 encoding, so any
 * text is representable and the vocabulary is 256. Bytes 0xFE and 0xFF never occur in UTF-8, which
 * frees them for the two special tokens: end of text and the image placeholder.
 */

const encoder = new TextEncoder();

// ignoreBOM keeps a leading U+FEFF as text: by default TextDecoder swallows it, and a string that
// starts with one would not survive encode -> decode.
const decoderOptions: TextDecoderOptions = { fatal: false, ignoreBOM: true };

export class ByteTokenizer {
  readonly numTokens = 256;
  readonly eosTokenId = 254;
  readonly imageTokenId = 255;

  encode(text: string): number[] {
    const bytes = encoder.encode(text);
    // A loop, not Array.from(bytes): JavaScriptCore's Array.from over a typed array takes about
    // 200 ms a MiB, which a 1 MiB prompt would cost the HTTP thread.
    const ids = new Array<number>(bytes.length);
    for (let i = 0; i < bytes.length; i++) ids[i] = bytes[i]!;
    return ids;
  }

  /** Special tokens are skipped; bytes that are not valid UTF-8 become U+FFFD. */
  decode(ids: Iterable<number>): string {
    const bytes: number[] = [];
    for (const id of ids) {
      if (this.isText(id)) bytes.push(id);
    }
    return new TextDecoder('utf-8', decoderOptions).decode(Uint8Array.from(bytes));
  }

  /** Whether a token is a byte of text (as opposed to EOS or an image placeholder). */
  isText(id: number): boolean {
    if (!Number.isInteger(id) || id < 0 || id >= this.numTokens) {
      throw new RangeError(`token id must be an integer in [0, ${this.numTokens}), got ${id}`);
    }
    return id !== this.eosTokenId && id !== this.imageTokenId;
  }

  streamDecoder(): StreamDecoder {
    return new StreamDecoder(this);
  }
}

/**
 * Turns tokens into text one at a time for streaming. A multi-byte character is emitted whole, at its
 * last byte; until then its first bytes are held back. The concatenation of everything pushed and
 * flushed equals `decode()` of the same tokens.
 */
export class StreamDecoder {
  // A streaming TextDecoder already holds incomplete sequences and replaces invalid ones.
  private readonly decoder = new TextDecoder('utf-8', decoderOptions);

  constructor(private readonly tokenizer: ByteTokenizer) {}

  push(tokenId: number): string {
    if (!this.tokenizer.isText(tokenId)) return '';
    return this.decoder.decode(Uint8Array.of(tokenId), { stream: true });
  }

  /** Ends the stream: a character still incomplete becomes U+FFFD. The decoder can then be reused. */
  flush(): string {
    return this.decoder.decode();
  }
}
