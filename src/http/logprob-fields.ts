/**
 * Log-probabilities as the routes answer them: OpenAI's shape (`logprobs` of the chat route), and the
 * fields of a caption's `event: token`. Tokens are bytes: a byte below 0x80 is its character; any
 * other is written `bytes:\xNN` (as OpenAI writes a token that is not whole UTF-8), and `bytes`
 * always holds its value. The end of text has no bytes: it is `<|endoftext|>` with `bytes: null`.
 */
import { ByteTokenizer } from '../../model/tokenizer.ts';
import type { TokenChoice, TokenLogprob } from '../inference/logprobs.ts';

const { eosTokenId } = new ByteTokenizer();

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
