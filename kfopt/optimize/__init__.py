"""The stages that make faster or smaller variants of a trained model: quantize, prune, distill.

Each stage (`quantize.run`, `prune.run`, `distill.run`) reads the baseline variant and the Dataset
artifact and writes ONE folder holding several variant folders, each with its kfopt.json, so the
benchmark and the report pick them up with no special case:

    quantize  tflite_dynamic, tflite_fp16, tflite_int8, onnx_int8, onnx_int8_trt, tflite_qat_int8;
              for a torch baseline also torch_compile, pt2e_int8, pt2e_qat_int8
    prune     pruned_<NN> (fp32 SavedModel, or for torch a structurally pruned .pt2) + pruned_<NN>_tflite_int8,
              pruned_<NN>_onnx_fp32, pruned_<NN>_onnx_int8 for the sparsity its search kept (NN); for
              torch also sparse_<NN> (global-magnitude pruning, searched the same way) and its chain
    distill   student (fp32 SavedModel or .pt2) + student_tflite_int8, student_onnx_fp32, student_onnx_int8

The techniques themselves are passes (kfopt.passes): the stages get the model through the adapter of
the baseline's framework (kfopt.frameworks) and compose passes; prune and distill declare the passes
that follow their fp32 models as a CHAIN. Every variant is checked in the stage (kfopt.passes.check:
validation split, against the baseline, with the budget its parent left) and the int8 passes go
through the accuracy-aware fallback. The test split stays untouched for the benchmark's
verification, the gate no variant can skip.
"""
