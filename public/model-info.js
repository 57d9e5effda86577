/** The header's model card: what GET /v1/models says is loaded, and on which backend. */
import { describeError, request } from './api.js';

export class ModelInfo {
  #section;

  constructor(section) {
    this.#section = section;
  }

  async refresh() {
    try {
      const { data } = await (await request('/v1/models')).json();
      this.show(data[0]);
    } catch (error) {
      this.#field('#model-error', describeError(error)).hidden = false;
      this.#section.dataset.state = 'error';
    }
  }

  /** Shows a model as GET /v1/models and PUT /v1/models/current describe it. */
  show(model) {
    this.#field('#model-id', model.id);
    this.#field('#model-parameters', model.parameter_count.toLocaleString('en'));
    this.#field('#model-backend', describeBackend(model.backend));
    this.#field('#model-checkpoint', model.checkpoint ?? 'none: freshly initialised');
    this.#section.querySelector('#model-untrained').hidden = !model.untrained;
    this.#section.querySelector('#model-error').hidden = true;
    this.#section.dataset.state = 'loaded';
  }

  #field(selector, text) {
    const element = this.#section.querySelector(selector);
    element.textContent = text;
    return element;
  }
}

function describeBackend({ name, threads, simd, matmulPrecision }) {
  const precision = matmulPrecision === 'bfloat16' ? ', products in bfloat16' : '';
  return `${name}${simd ? ' (SIMD)' : ''}, ${threads} thread${threads === 1 ? '' : 's'}${precision}`;
}
