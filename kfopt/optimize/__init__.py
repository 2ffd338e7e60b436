"""Techniques that make faster or smaller variants of a trained model: quantize, prune, distill.

Each stage (`quantize.run`, `prune.run`, `distill.run`) reads the baseline variant and the Dataset
artifact and writes ONE folder holding several variant folders, each with its kfopt.json, so the
benchmark and the report pick them up with no special case:

    quantize  tflite_dynamic, tflite_fp16, tflite_int8, onnx_int8, onnx_int8_trt, tflite_qat_int8
    prune     pruned_<NN> (fp32 SavedModel) + pruned_<NN>_tflite_int8, one pair per target sparsity
    distill   student (fp32 SavedModel) + student_tflite_int8

Every int8 path goes through `gate.with_fallback`: the variant is checked against its float parent on
the validation split, and when it misses the accuracy budget the layers whose quantization hurts most
are kept in float and the conversion is tried again, a bounded number of times. The best attempt is
always saved, with what was kept in float recorded in kfopt.json. The test split stays untouched for
the benchmark's verification, the gate no variant can skip.
"""
