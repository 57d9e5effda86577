/** What the routers are built from: createApp() receives the first two and adds the metrics. */
import type { ServerConfig } from './settings.ts';
import type { InferencePool } from '../inference/pool.ts';
import type { Lifecycle } from './lifecycle.ts';
import type { TrainingScheduler } from '../jobs/scheduler.ts';
import type { Metrics } from './metrics.ts';

export interface AppServices {
  pool: InferencePool;
  config: ServerConfig;
  /** The training job scheduler; without it the /v1/training routes are not mounted. */
  training?: TrainingScheduler;
  /** Whether the server drains (shuts down). */
  lifecycle: Lifecycle;
}

export interface Services extends AppServices {
  metrics: Metrics;
}
