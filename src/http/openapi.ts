/**
 * The OpenAPI 3 document of the API, served at GET /openapi.json: one entry per route that the app
 * mounts, each request body from the same zod schema that checks it (zod's own JSON Schema output),
 * so the document cannot drift from what the server accepts. Checks that a schema makes in code (a
 * transform) reach it as the schema's metadata, where JSON Schema can say them.
 */
import { z } from 'zod';
import { DURING_DRAIN } from './lifecycle.ts';

type MediaType = 'application/json' | 'multipart/form-data';

export interface RouteDoc {
  method: 'get' | 'post' | 'put';
  /** As the router writes it (`/jobs/:id`); app.ts adds the mount point. */
  path: string;
  summary: string;
  /** The accepted request bodies, by media type. */
  body?: Partial<Record<MediaType, z.ZodType>>;
  /** The query parameters, one a field. */
  query?: z.ZodObject;
  /** Status -> what the answer is; with `type`, the media type of its body, or the types it may have (JSON otherwise). */
  responses: Record<number, string | { description: string; type: string | string[] }>;
  /** Needs the API_KEY as a bearer token when the server has one. */
  auth?: boolean;
}

/** The body of every error answer (DESIGN.md section 4) and of a failed stream's `event: error`. */
const errorBody = z.object({
  error: z.object({
    code: z.string(),
    message: z.string(),
    type: z.string().meta({ description: "OpenAI's class of error: invalid_request_error, authentication_error, permission_error, rate_limit_error or server_error" }),
    param: z.string().nullable().meta({ description: 'OpenAI\'s name for the request field at fault; null when none is' }),
    field: z.string().optional().meta({ description: 'the request field at fault, as the client spelled it' }),
  }),
});

const jsonSchema = (schema: z.ZodType) => z.toJSONSchema(schema, {
  io: 'input',
  target: 'openapi-3.0',
  unrepresentable: 'any',
  override: ({ jsonSchema: written }) => {
    // zod writes a file as newer JSON Schema does (contentEncoding); OpenAPI 3.0 knows it as format: binary.
    if (written.contentEncoding === 'binary') {
      delete written.contentEncoding;
      written.format = 'binary';
    }
    // OpenAPI 3.0 reads `nullable` only beside a `type`, which zod's anyOf of a field's forms has not:
    // each form takes null instead, so that a client's null (which the server accepts) validates.
    if (written.nullable === true && written.type === undefined && Array.isArray(written.anyOf)) {
      delete written.nullable;
      written.anyOf = written.anyOf.map((form) => ({ ...(form as object), nullable: true }));
    }
  },
});

/** Answers of the checks that run before every route (src/http/app.ts), where the route does not say them itself. */
function sharedAnswers(route: RouteDoc): Record<number, string> {
  const answers: Record<number, string> = {};
  if (route.method !== 'get') answers[403] = "a page of another site (cross_origin): a request that changes anything must come from the server's own origin";
  if (route.body) answers[408] = 'the body did not arrive in full within BODY_TIMEOUT_MS (request_timeout); the connection is closed';
  answers[421] = 'a Host this server does not serve (misdirected_request)';
  answers[500] = 'an error of the server itself (internal_error)';
  if (!DURING_DRAIN.includes(route.path)) answers[503] = 'the server is shutting down (not_ready); Retry-After says when to ask another';
  return answers;
}

/** Shared by the routes that generate text. */
export const GENERATION_ANSWERS = {
  400: 'a bad field, named in error.field',
  413: 'the body is over MAX_UPLOAD_BYTES, or an image declares more than 40 million pixels',
  415: 'the Content-Type is not accepted, or the image format is not',
  422: "the model's numbers overflow on this input",
  429: 'MAX_CONCURRENT_STREAMS generations run or wait; see Retry-After',
  503: 'the server is shutting down, or the served model changed while the request waited (not_ready); Retry-After says when to send it again',
};

export function openApiDocument(routes: RouteDoc[], info: { title: string; version: string; description: string }) {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of routes) {
    const names = [...route.path.matchAll(/:(\w+)/g)].map((match) => match[1]!);
    const pathParameters = names.map((name) => ({ name, in: 'path', required: true, schema: { type: 'string' } }));
    const queryParameters = Object.entries(route.query?.shape ?? {}).map(([name, field]) => {
      const { description, ...schema } = jsonSchema(field as z.ZodType) as { description?: string };
      return { name, in: 'query', required: false, ...(description && { description }), schema };
    });
    const parameters = [...pathParameters, ...queryParameters];
    const responses = Object.fromEntries(
      Object.entries({ ...sharedAnswers(route), ...route.responses }).map(([status, answer]) => {
        const { description, type } = typeof answer === 'string' ? { description: answer, type: 'application/json' } : answer;
        const schemaOf = (media: string) => (Number(status) >= 400 ? { $ref: '#/components/schemas/Error' } : media === 'application/json' ? { type: 'object' } : { type: 'string' });
        return [status, { description, content: Object.fromEntries([type].flat().map((media) => [media, { schema: schemaOf(media) }])) }];
      }),
    );
    const path = (paths[route.path.replace(/:(\w+)/g, '{$1}')] ??= {});
    path[route.method] = {
      summary: route.summary,
      ...(parameters.length > 0 && { parameters }),
      ...(route.body && {
        requestBody: {
          required: true,
          content: Object.fromEntries(Object.entries(route.body).map(([type, schema]) => [type, { schema: jsonSchema(schema) }])),
        },
      }),
      responses,
      ...(route.auth && { security: [{ bearer: [] }] }),
    };
  }
  return {
    openapi: '3.0.3',
    info,
    paths,
    components: {
      schemas: { Error: jsonSchema(errorBody) },
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'API_KEY, when the server has one' } },
    },
  };
}
