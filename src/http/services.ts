/** What the routers are built from: createApp() receives the first two and adds the metrics. */
import type { ServerConfig } from './settings.ts';
import type { InferencePool } from '../inference/pool.ts';
import type { Lifecycle } from './lifecycle.ts';
import type { TrainingJobs } from '../jobs/training-jobs.ts';
import type { Metrics } from './metrics.ts';

export interface AppServices {
  pool: InferencePool;
  config: ServerConfig;
  /** The training jobs (SQLite or Redis); without them the /v1/training routes are not mounted. */
  training?: TrainingJobs;
  /** Whether the server drains (shuts down). */
  lifecycle: Lifecycle;
}

export interface Services extends AppServices {
  metrics: Metrics;
}
