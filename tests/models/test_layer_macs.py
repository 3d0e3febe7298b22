"""keras_t2t.flops.count_layer_macs: any Keras model's Conv/Dense MACs against counts written out by hand."""

import keras
import pytest

import keras_t2t
from keras_t2t.flops import count_layer_macs


def tiny_conv_net():
    """8x8x3 images through one layer of each counted kind; the comments give each layer's MACs."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)  # 8x8 out x 3x3x3 kernel x 4
    x = keras.layers.BatchNormalization(name="bn")(x)  # not counted
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, name="depthwise")(x)
    x = keras.layers.Conv2D(6, 1, groups=2, name="grouped")(x)  # 4x4 x 1x1 x (8 / 2 groups) x 6
    x = keras.layers.SeparableConv2D(5, 3, name="separable")(x)  # valid: 4x4 -> 2x2
    x = keras.layers.Conv2DTranspose(2, 2, strides=2, name="transposed")(x)  # 2x2 -> 4x4
    x = keras.layers.Reshape((16, 2), name="tokens")(x)
    x = keras.layers.Dense(3, name="per_token")(x)  # a Dense on 16 tokens
    x = keras.layers.Flatten(name="flatten")(x)
    head = keras.Sequential([keras.Input((48,)), keras.layers.Dense(7, name="fc1"), keras.layers.Dense(2, name="fc2")],
                            name="head")
    return keras.Model(inputs, head(x))


TINY_BY_HAND = {
    "conv": 8 * 8 * (3 * 3 * 3) * 4,  # 6912
    "depthwise": 4 * 4 * (3 * 3) * 4 * 2,  # 1152: every input channel, 2 outputs each
    "grouped": 4 * 4 * (8 // 2) * 6,  # 384
    "separable": 2 * 2 * (3 * 3) * 6 + 2 * 2 * 6 * 5,  # 216 depthwise + 120 pointwise
    "transposed": 2 * 2 * (2 * 2 * 5) * 2,  # 160: each of the 2x2 input pixels scatters a 2x2x2 patch from 5 channels
    "per_token": 16 * 2 * 3,  # 96
    "head/fc1": 48 * 7,  # 336
    "head/fc2": 7 * 2,  # 14
}


def test_a_tiny_conv_net_has_its_hand_counted_macs():
    result = count_layer_macs(tiny_conv_net())
    assert result["layers"] == TINY_BY_HAND
    assert result["total_macs"] == 9_390 == sum(TINY_BY_HAND.values())
    assert result["total_flops"] == 2 * 9_390
    assert result["uncounted"] == []


def resnet_macs(blocks, image=224, classes=1000, stride_on="1x1"):
    """MACs of a bottleneck ResNet, layer by layer from He et al. 2016 (Table 1).

    ``stride_on="1x1"``: a downsampling block strides in its first 1x1 convolution, as
    the original ResNet and ``keras.applications`` do; ``"3x3"``: in its 3x3
    convolution, as torchvision's ResNet ("v1.5") does.
    """
    side = image // 2  # conv1: 7x7, stride 2, 3 -> 64
    macs = side * side * 7 * 7 * 3 * 64
    side //= 2  # 3x3 max pool, stride 2
    channels = 64
    for stage, count in enumerate(blocks):
        width = 64 * 2**stage
        for block in range(count):
            stride = 2 if stage > 0 and block == 0 else 1
            out = side // stride
            first_side = out if stride_on == "1x1" else side
            macs += first_side * first_side * channels * width  # 1x1 reduce
            macs += out * out * 3 * 3 * width * width  # 3x3
            macs += out * out * width * 4 * width  # 1x1 expand
            if block == 0:
                macs += out * out * channels * 4 * width  # the projection shortcut
            channels, side = 4 * width, out
    return macs + channels * classes  # the fully connected layer


def test_the_resnet_hand_counts_are_the_published_ones():
    # The ResNet paper's "3.8 x 10^9 FLOPs" (multiply-adds) for ResNet-50, 7.6 for -101, 11.3 for -152 ...
    assert resnet_macs((3, 4, 6, 3)) == 3_857_973_248
    assert resnet_macs((3, 4, 23, 3)) == 7_570_194_432
    assert resnet_macs((3, 8, 36, 3)) == 11_282_415_616
    # ... and torchvision's 4.09 G for ResNet-50 with the stride on the 3x3 ("about 4.1 G").
    assert resnet_macs((3, 4, 6, 3), stride_on="3x3") == 4_089_184_256


def test_keras_resnet50_at_224_has_the_hand_counted_macs():
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    result = count_layer_macs(model)
    assert result["total_macs"] == resnet_macs((3, 4, 6, 3))
    assert result["layers"]["conv1_conv"] == 112 * 112 * 7 * 7 * 3 * 64
    assert result["layers"]["predictions"] == 2048 * 1000
    assert len(result["layers"]) == 1 + 16 * 3 + 4 + 1  # stem, 16 blocks of 3 convs, 4 shortcuts, fc
    assert result["uncounted"] == []


def test_a_t2t_model_names_the_layers_it_cannot_see_into():
    # T2T-ViT's Dense layers live inside its own layers: only the head is counted here,
    # the rest is named (count_flops counts T2T-ViT models).
    result = count_layer_macs(keras_t2t.t2t_vit_mini(classes=10))
    assert result["layers"] == {"head": 128 * 10}
    assert {"tokens_to_token", "blocks_0", "blocks_3"} <= set(result["uncounted"])


def test_models_it_cannot_count_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"layer 'conv1_conv' has an unknown size .*fixed input shape"):
        count_layer_macs(keras.applications.ResNet50(weights=None, input_shape=(None, None, 3), include_top=False))
    inputs = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    with pytest.raises(ValueError, match=r"layer 'shared' is called 2 times"):
        count_layer_macs(keras.Model(inputs, shared(shared(inputs))))
    with pytest.raises(ValueError, match="counts a keras.Model; got Dense"):
        count_layer_macs(keras.layers.Dense(3))
