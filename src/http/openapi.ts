/**
 * The OpenAPI 3 document of the API, served at GET /openapi.json: one entry per route that the app
 * mounts, each request body from the same zod schema that checks it (zod's own JSON Schema output),
 * so the document cannot drift from what the server accepts.
 */
import { z } from 'zod';

type MediaType = 'application/json' | 'multipart/form-data';

export interface RouteDoc {
  method: 'get' | 'post' | 'put';
  /** As the router writes it (`/jobs/:id`); app.ts adds the mount point. */
  path: string;
  summary: string;
  /** The accepted request bodies, by media type. */
  body?: Partial<Record<MediaType, z.ZodType>>;
  /** Status -> what the answer is; with `type`, the media type of its body, or the types it may have (JSON otherwise). */
  responses: Record<number, string | { description: string; type: string | string[] }>;
  /** Needs the API_KEY as a bearer token when the server has one. */
  auth?: boolean;
}

/** The body of every error answer (DESIGN.md section 4) and of every `event: error`. */
const errorBody = z.object({
  error: z.object({
    code: z.string(),
    message: z.string(),
    field: z.string().optional().meta({ description: 'the request field at fault, as the client spelled it' }),
  }),
});

const jsonSchema = (schema: z.ZodType) => z.toJSONSchema(schema, {
  io: 'input',
  target: 'openapi-3.0',
  unrepresentable: 'any',
  // zod writes a file as newer JSON Schema does (contentEncoding); OpenAPI 3.0 knows it as format: binary.
  override: ({ jsonSchema: written }) => {
    if (written.contentEncoding !== 'binary') return;
    delete written.contentEncoding;
    written.format = 'binary';
  },
});

export function openApiDocument(routes: RouteDoc[], info: { title: string; version: string; description: string }) {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of routes) {
    const names = [...route.path.matchAll(/:(\w+)/g)].map((match) => match[1]!);
    const responses = Object.fromEntries(
      Object.entries(route.responses).map(([status, answer]) => {
        const { description, type } = typeof answer === 'string' ? { description: answer, type: 'application/json' } : answer;
        const schemaOf = (media: string) => (Number(status) >= 400 ? { $ref: '#/components/schemas/Error' } : media === 'application/json' ? { type: 'object' } : { type: 'string' });
        return [status, { description, content: Object.fromEntries([type].flat().map((media) => [media, { schema: schemaOf(media) }])) }];
      }),
    );
    const path = (paths[route.path.replace(/:(\w+)/g, '{$1}')] ??= {});
    path[route.method] = {
      summary: route.summary,
      ...(names.length > 0 && { parameters: names.map((name) => ({ name, in: 'path', required: true, schema: { type: 'string' } })) }),
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
