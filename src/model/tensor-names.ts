/** Tensor names of the model package's ONNX graphs: the contract between importer and engine. */
export const TensorNames = {
  inputIds: 'input_ids',
  positionIds: 'position_ids',
  attentionMask: 'attention_mask',
  /** Fused body: per row, its total length after this call minus one (GroupQueryAttention's convention). */
  seqlensK: 'seqlens_k',
  /** Fused body: the longest row's total length after this call, an int32 scalar. */
  totalSequenceLength: 'total_sequence_length',
  hiddenStates: 'hidden_states',
  logits: 'logits',
  pastKey: (layer: number) => `past_key_values.${layer}.key`,
  pastValue: (layer: number) => `past_key_values.${layer}.value`,
  presentKey: (layer: number) => `present.${layer}.key`,
  presentValue: (layer: number) => `present.${layer}.value`,
  layerHidden: (layer: number) => `hidden_states.layer.${layer}`,
} as const;
