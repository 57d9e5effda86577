/**
 * Log-probabilities of generated tokens, so that a client sees how sure the model was of each one
 * (`logprobs` / `top_logprobs`, in OpenAI's shape). They are the model's own distribution: the
 * log-softmax of the logits a token was drawn from, before temperature and the top-k, top-p and min-p
 * filters reshape it for sampling. The image placeholder, which the model never writes, is left out.
 *
 * Tokens are bytes: a byte below 0x80 is its character; any other is written `bytes:\xNN` (as
 * OpenAI writes a token that is not whole UTF-8), and `bytes` always holds its value. The end of text
 * has no bytes: it is `<|endoftext|>` with `bytes: null`.
 */
import { ByteTokenizer } from '../../model/tokenizer.ts';

/** At most this many alternatives per token, as OpenAI allows. */
export const MAX_TOP_LOGPROBS = 20;

export interface TokenChoice {
  tokenId: number;
  logprob: number;
}

/** The chosen token's log-probability, and the `top` most likely tokens at its position. */
export interface TokenLogprob extends TokenChoice {
  top: TokenChoice[];
}

const { eosTokenId } = new ByteTokenizer();

/** From the logits a token was drawn from (the image placeholder at -Infinity). */
export function tokenLogprob(logits: Float32Array, tokenId: number, top: number): TokenLogprob {
  let max = -Infinity;
  for (const value of logits) max = Math.max(max, value);
  let sum = 0;
  for (const value of logits) sum += Math.exp(value - max);
  const logNormalizer = max + Math.log(sum);
  const ranked: number[] = [];
  if (top > 0) {
    for (let id = 0; id < logits.length; id++) if (Number.isFinite(logits[id])) ranked.push(id);
    // Most likely first; ties keep the lower id first, as greedy decoding does.
    ranked.sort((a, b) => logits[b]! - logits[a]! || a - b);
  }
  return {
    tokenId,
    logprob: logits[tokenId]! - logNormalizer,
    top: ranked.slice(0, top).map((id) => ({ tokenId: id, logprob: logits[id]! - logNormalizer })),
  };
}

/** OpenAI's ChatCompletionTokenLogprob (and TopLogprob) for one token. */
export interface OpenAiLogprob {
  token: string;
  logprob: number;
  bytes: number[] | null;
  top_logprobs?: OpenAiLogprob[];
}

/** `withTokenIds` adds each token's `token_id` (the captions route, whose token events carry it too). */
export function openAiLogprob({ tokenId, logprob, top }: TokenLogprob, withTokenIds = false): Required<OpenAiLogprob> {
  const choice = (c: TokenChoice) => ({ ...openAiChoice(c), ...(withTokenIds && { token_id: c.tokenId }) });
  return { ...choice({ tokenId, logprob }), top_logprobs: top.map(choice) };
}

function openAiChoice({ tokenId, logprob }: TokenChoice): OpenAiLogprob {
  if (tokenId === eosTokenId) return { token: '<|endoftext|>', logprob, bytes: null };
  const token = tokenId < 0x80 ? String.fromCharCode(tokenId) : `bytes:\\x${tokenId.toString(16).padStart(2, '0')}`;
  return { token, logprob, bytes: [tokenId] };
}

/** The fields a caption's `event: token` gains: `logprob`, and `top_logprobs` when alternatives were asked for. */
export function tokenEventFields(logprob: TokenLogprob | undefined): { logprob?: number; top_logprobs?: OpenAiLogprob[] } {
  if (!logprob) return {};
  const { top_logprobs } = openAiLogprob(logprob, true);
  return { logprob: logprob.logprob, ...(top_logprobs.length > 0 && { top_logprobs }) };
}
