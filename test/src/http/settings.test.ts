import { describe, expect, test } from 'bun:test';
import { loadServerConfig } from '../../../src/http/settings.ts';

describe('INFERENCE_JOIN', () => {
  test('is off unless set, and reads true, false, 1 and 0', () => {
    expect(loadServerConfig({}).inferenceJoin).toBe(false);
    expect(loadServerConfig({ INFERENCE_JOIN: 'true' }).inferenceJoin).toBe(true);
    expect(loadServerConfig({ INFERENCE_JOIN: '1' }).inferenceJoin).toBe(true);
    expect(loadServerConfig({ INFERENCE_JOIN: '0' }).inferenceJoin).toBe(false);
    expect(loadServerConfig({ INFERENCE_JOIN: ' false ' }).inferenceJoin).toBe(false);
  });

  test('anything else stops the server with the setting named', () => {
    expect(() => loadServerConfig({ INFERENCE_JOIN: 'yes' })).toThrow("INFERENCE_JOIN must be true or false (or 1 or 0), got 'yes'");
  });
});
