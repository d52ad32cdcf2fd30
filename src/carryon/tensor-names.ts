/**
 * Tensor names of a carry-on graph (`model.onnx`): the contract between the carry-on builder,
 * the PyTorch trainer's exporter and the engine.
 *
 * Inputs deliberately reuse the base package's names (`hidden_states`, `hidden_states.layer.{k}`,
 * `input_ids`, `position_ids`, `attention_mask`) so the engine can hand the base body's outputs
 * and its own feeds to the carry-on unchanged. The KV cache uses a `carry_on.` namespace so base
 * and carry-on past/present tensors can share one feed map without clashing.
 *
 * | name                          | dtype   | shape                                          |
 * | ----------------------------- | ------- | ---------------------------------------------- |
 * | in  `hidden_states`           | float32 | [batch, sequence, hidden]  (input layer 'final') |
 * | in  `hidden_states.layer.{k}` | float32 | [batch, sequence, hidden]  (input layer k)     |
 * | in  `input_ids`               | int64   | [batch, sequence]  (only when reads_token_ids) |
 * | in  `position_ids`            | int64   | [batch, sequence]                              |
 * | in  `attention_mask`          | int64   | [batch, total_sequence]                        |
 * | in  `carry_on.past.{i}.key`   | float32 | [batch, kv_heads, past_sequence, head_dim]     |
 * | in  `carry_on.past.{i}.value` | float32 | [batch, kv_heads, past_sequence, head_dim]     |
 * | out `delta`                   | float32 | [batch, sequence, hidden]                      |
 * | out `gate`                    | float32 | [batch, sequence, hidden]  (sigmoid)           |
 * | out `carry_on.present.{i}.key`   | float32 | [batch, kv_heads, total_sequence, head_dim] |
 * | out `carry_on.present.{i}.value` | float32 | [batch, kv_heads, total_sequence, head_dim] |
 *
 * `gate` is a sigmoid, so in (0, 1) mathematically; in float32 it rounds to exactly 1.0 once its
 * pre-activation passes about 17, which the combination x + α·gate·delta tolerates.
 *
 * A mixture carry-on also reads secondary base j's layers as `secondary.{j}.hidden_states` and
 * `secondary.{j}.hidden_states.layer.{k}` [batch, sequence, that base's hidden size].
 *
 * Graph inputs appear in this order: one per input layer (in the manifest's `input_layers`
 * order), then each secondary base's (in `secondary_bases` order, each in its `input_layers` order), `input_ids` if read, `position_ids`, `attention_mask`, then past key/value per block.
 */
import { TensorNames } from '../model/tensor-names.js';

/** One source of the carry-on's input: the base's final hidden state, or block k's residual stream. */
export type InputLayer = 'final' | number;

export const CarryOnTensorNames = {
  inputIds: TensorNames.inputIds,
  positionIds: TensorNames.positionIds,
  attentionMask: TensorNames.attentionMask,
  delta: 'delta',
  gate: 'gate',
  /** The base tensor that feeds the carry-on for an input layer. */
  input: (layer: InputLayer): string => (layer === 'final' ? TensorNames.hiddenStates : TensorNames.layerHidden(layer)),
  /** Secondary base j's tensor for an input layer (mixture carry-ons). */
  secondaryInput: (base: number, layer: InputLayer): string =>
    `secondary.${base}.${layer === 'final' ? TensorNames.hiddenStates : TensorNames.layerHidden(layer)}`,
  pastKey: (block: number): string => `carry_on.past.${block}.key`,
  pastValue: (block: number): string => `carry_on.past.${block}.value`,
  presentKey: (block: number): string => `carry_on.present.${block}.key`,
  presentValue: (block: number): string => `carry_on.present.${block}.value`,
} as const;

/** What a carry-on reads besides the primary base: a secondary base's width and layers. */
export interface SecondaryInput {
  hiddenSize: number;
  inputLayers: InputLayer[];
}

/**
 * The hidden-state inputs in concatenation order, named and sized: the primary's layers, then each
 * secondary base's. The one place that order is written down for builder, checker and engine.
 */
export function hiddenInputs(
  primary: { hiddenSize: number; inputLayers: InputLayer[] },
  secondaries: readonly SecondaryInput[],
): Array<{ name: string; size: number }> {
  return [
    ...primary.inputLayers.map((layer) => ({ name: CarryOnTensorNames.input(layer), size: primary.hiddenSize })),
    ...secondaries.flatMap((s, j) => s.inputLayers.map((layer) => ({ name: CarryOnTensorNames.secondaryInput(j, layer), size: s.hiddenSize }))),
  ];
}
