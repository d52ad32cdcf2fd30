/** Tensor names of the model package's ONNX graphs: the contract between importer and engine. */
export const TensorNames = {
  inputIds: 'input_ids',
  positionIds: 'position_ids',
  attentionMask: 'attention_mask',
  /** Pooled body: per row, how many positions of its KV pool row are its past. */
  pastLengths: 'past_lengths',
  hiddenStates: 'hidden_states',
  logits: 'logits',
  pastKey: (layer: number) => `past_key_values.${layer}.key`,
  pastValue: (layer: number) => `past_key_values.${layer}.value`,
  presentKey: (layer: number) => `present.${layer}.key`,
  presentValue: (layer: number) => `present.${layer}.value`,
  /** Pooled body: this call's keys (after RoPE) and values, for the caller to append to its pool. */
  newKey: (layer: number) => `new.${layer}.key`,
  newValue: (layer: number) => `new.${layer}.value`,
  layerHidden: (layer: number) => `hidden_states.layer.${layer}`,
} as const;
