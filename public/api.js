/**
 * The page's calls to this server: a non-2xx answer becomes a thrown ApiError carrying the
 * `{ error: { code, message } }` of the API, and the API key, when one is typed, goes as a bearer token.
 */

export class ApiError extends Error {
  /** retryAfter: the seconds a 429 or 503 says to wait before asking again (Retry-After), if it says. */
  constructor(status, code, message, retryAfter) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  /** The error a failed response describes; a body that is not the API's JSON (a proxy's page) is summed up by its status. */
  static async from(response) {
    const body = await response.json().catch(() => undefined);
    const { code = `http_${response.status}`, message = `HTTP ${response.status} ${response.statusText}`.trim() } = body?.error ?? {};
    const retryAfter = Number(response.headers.get('retry-after') ?? NaN);
    return new ApiError(response.status, code, message, Number.isFinite(retryAfter) ? retryAfter : undefined);
  }
}

/** One line for the page: what went wrong, and its code. */
export function describeError(error) {
  if (error instanceof ApiError) {
    // A 503's message says when to come back; a 429's says only "later", and its Retry-After how much later.
    const wait = error.status === 429 && error.retryAfter !== undefined ? `retry after ${error.retryAfter} s; ` : '';
    return `${error.message} (${wait}${error.code}, HTTP ${error.status})`;
  }
  if (error instanceof TypeError) return `the server could not be reached: ${error.message}`;
  return error.message ?? String(error);
}

/** fetch() that throws the ApiError of a non-2xx answer. */
export async function request(path, init = {}) {
  const response = await fetch(path, init);
  if (!response.ok) throw await ApiError.from(response);
  return response;
}

/** Requests to the routes that need the API key when the server sets API_KEY (training, changing the model). */
export function authorized(apiKey) {
  const headers = (extra = {}) => {
    const key = apiKey();
    return key ? { ...extra, authorization: `Bearer ${key}` } : extra;
  };
  return {
    get: (path, { headers: extra, ...init } = {}) => request(path, { ...init, headers: headers(extra) }),
    send: (method, path, body) =>
      request(path, { method, headers: headers({ 'content-type': 'application/json' }), body: JSON.stringify(body ?? {}) }).then((r) => r.json()),
  };
}
