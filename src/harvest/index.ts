/** The harvest subsystem's public surface (see docs/harvest-format.md). */
export { Harvester, type HarvesterOptions } from './harvester.js';
export { HarvestProducer, sequenceQueueBytes, type HarvestProducerHandle } from './producer.js';
export {
  ShardWriter,
  tenantDirName,
  type ForgetReport,
  type RecoveryReport,
  type RescanReport,
  type ShardWriterOptions,
} from './shard-writer.js';
export {
  SHARD_FORMAT,
  SHARD_FORMAT_VERSION,
  decodeShardLayer,
  layerTensorName,
  parseShardMetadata,
  readShard,
  validateShardFile,
  type HarvestShard,
  type LayerId,
  type ShardInfo,
  type ShardMetadata,
} from './shard-format.js';
export { Sigma, decodeRows, reconstructionError, SIGMA_CODECS, type SigmaCodec, type SigmaSpec } from './sigma.js';
export { applyRetention, forgetTenant, planRetention, type IndexedShard, type RetentionPolicy } from './retention.js';
export { harvestOffline, type OfflineHarvestOptions, type OfflineHarvestReport } from './offline.js';
export type { HarvestStats } from './stats.js';
export type { HarvestedSequence, HarvestPolicy } from './types.js';
