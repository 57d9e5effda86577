/** The playground page: wires the model card, the caption panel and the training panel. */
import { authorized } from './api.js';
import { setupCaption } from './caption.js';
import { ModelInfo } from './model-info.js';
import { setupTraining } from './training.js';

const apiKey = document.querySelector('#api-key');
const modelInfo = new ModelInfo(document.querySelector('#model'));
setupCaption(document.querySelector('#caption'));
setupTraining(document.querySelector('#training'), authorized(() => apiKey.value.trim()), modelInfo, apiKey);
modelInfo.refresh();
