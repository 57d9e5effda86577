/**
 * The evaluation's side of the public HTTP API: what it asks of a server (running in this process
 * or elsewhere), always greedy, so that a score is a property of the model and not of a draw.
 */

export interface ServedModelInfo {
  id: string;
  checkpoint: string | null;
  untrained: boolean;
  segmentLen: number;
  /** 1-based layers with a neural memory; empty for an attention-only model. */
  neuralMemoryLayers: number[];
}

export interface Completion {
  /** The response's id, as the server logged it. */
  id: string;
  text: string;
  completionTokens: number;
}

export class ApiRequestError extends Error {
  override name = 'ApiRequestError';
}

export async function servedModel(url: string): Promise<ServedModelInfo> {
  const body = (await call(`${url}/v1/models/current`, { headers: { accept: 'application/json' } })) as {
    id: string;
    checkpoint: string | null;
    untrained: boolean;
    config: { segmentLen: number; neuralMemoryLayers: number[] };
  };
  const { segmentLen, neuralMemoryLayers } = body.config;
  return { id: body.id, checkpoint: body.checkpoint, untrained: body.untrained, segmentLen, neuralMemoryLayers };
}

/** POST /v1/captions with the file as a multipart upload, JSON answer. */
export async function captionFile(url: string, path: string, options: { prompt: string; maxTokens: number }): Promise<Completion> {
  const form = new FormData();
  // Bun.file is a Blob whose type follows the file's extension, as a browser upload's would.
  form.append('image', Bun.file(path));
  form.append('prompt', options.prompt);
  form.append('max_tokens', String(options.maxTokens));
  form.append('temperature', '0');
  form.append('stream', 'false');
  const body = (await call(`${url}/v1/captions`, { method: 'POST', body: form, headers: { accept: 'application/json' } })) as {
    id: string;
    text: string;
    usage: { completion_tokens: number };
  };
  return { id: body.id, text: body.text, completionTokens: body.usage.completion_tokens };
}

/** POST /v1/chat/completions with one user message, which the server reads as the bare prompt. */
export async function completeText(url: string, prompt: string, maxTokens: number): Promise<Completion> {
  const request = { messages: [{ role: 'user', content: prompt }], max_tokens: maxTokens, temperature: 0, stream: false };
  const body = (await call(`${url}/v1/chat/completions`, {
    method: 'POST',
    body: JSON.stringify(request),
    headers: { accept: 'application/json', 'content-type': 'application/json' },
  })) as { id: string; choices: { message: { content: string } }[]; usage: { completion_tokens: number } };
  return { id: body.id, text: body.choices[0]!.message.content, completionTokens: body.usage.completion_tokens };
}

async function call(url: string, init: RequestInit): Promise<unknown> {
  const response = await fetch(url, init);
  const body = (await response.json().catch(() => null)) as { error?: { code: string; message: string } } | null;
  if (!response.ok || body === null) {
    const reason = body?.error ? `${body.error.code}: ${body.error.message}` : 'no JSON body';
    throw new ApiRequestError(`${init.method ?? 'GET'} ${url}: HTTP ${response.status} (${reason})`);
  }
  return body;
}
