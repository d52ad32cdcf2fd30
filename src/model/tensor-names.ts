/** Tensor names of the model package's ONNX graphs: the contract between importer and engine. */
export const TensorNames = {
  inputIds: 'input_ids',
  positionIds: 'position_ids',
  attentionMask: 'attention_mask',
  hiddenStates: 'hidden_states',
  logits: 'logits',
  pastKey: (layer: number) => `past_key_values.${layer}.key`,
  pastValue: (layer: number) => `past_key_values.${layer}.value`,
  presentKey: (layer: number) => `present.${layer}.key`,
  presentValue: (layer: number) => `present.${layer}.value`,
  layerHidden: (layer: number) => `hidden_states.layer.${layer}`,
} as const;
