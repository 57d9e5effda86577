/**
 * Log-probabilities of generated tokens, so that a client sees how sure the model was of each one
 * (`logprobs` / `top_logprobs`, in OpenAI's shape). They are the model's own distribution: the
 * log-softmax of the logits a token was drawn from, before temperature and the top-k, top-p and min-p
 * filters reshape it for sampling. The image placeholder, which the model never writes, is left out.
 * src/http/logprob-fields.ts writes them as the routes answer them.
 */

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
