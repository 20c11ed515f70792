"""The mechanism metrics against values computed by hand on tiny inputs."""

import math

import numpy as np
import pytest

from clipmoe_demo.encoder import mechanism as M


def test_cluster_purity_by_hand():
    # clusters {a, a} and {b, b, a}; the -1 sample is left out
    r = M.cluster_purity([0, 0, 1, 1, 1, -1], ["a", "a", "b", "b", "a", "x"])
    assert r["samples"] == 5
    assert r["purity"] == pytest.approx(4 / 5)  # 2 + 2 majority members
    assert r["majority_floor"] == pytest.approx(3 / 5)
    h = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))  # both marginals are (0.6, 0.4)
    mi = 0.4 * math.log(0.4 / (0.4 * 0.6)) + 0.2 * math.log(0.2 / (0.6 * 0.6)) + 0.4 * math.log(0.4 / (0.6 * 0.4))
    assert r["nmi"] == pytest.approx(mi / h)


def test_cluster_purity_extremes():
    assert M.cluster_purity([0, 1, 0, 1], ["r", "g", "r", "g"])["nmi"] == pytest.approx(1.0)
    independent = M.cluster_purity([0, 0, 1, 1], ["r", "g", "r", "g"])
    assert independent["nmi"] == pytest.approx(0.0, abs=1e-12) and independent["purity"] == 0.5


def test_split_stage_labels_inverts_the_accumulation():
    from clipmoe_encoder.dmu.clustering import accumulate_labels

    k = 3
    image0, text0 = np.array([0, 2, 1, 0]), np.array([1, 0, 2, 2])
    image1, text1 = np.array([2, 2, 0, 1]), np.array([0, 1, 1, 2])
    stage0 = accumulate_labels(None, text0 * k + image0, k * k)
    stage1 = accumulate_labels(stage0, text1 * k + image1, k * k)
    stage1[3] = -1  # a sample left out stays out
    got = M.split_stage_labels(stage1, k)
    assert got["image"].tolist() == [2, 2, 0, -1] and got["text"].tolist() == [0, 1, 1, -1]
    assert got["joint"].tolist() == [2, 5, 3, -1]
    assert got["accumulated"].tolist() == stage1.tolist()


def test_patch_owners_by_hand():
    # 12-px image, 4-px patches: a 3 x 3 grid of thirds. Object 0: a small disc inside the top-left
    # patch; object 1: a disc at the centre reaching into the four edge-adjacent patches but not the
    # corners (corner distance sqrt(2)/6 = 0.236 > 0.2)
    objects = [{"x": 1 / 6, "y": 1 / 6, "radius": 0.1, "shape": "star", "colour": "red"},
               {"x": 0.5, "y": 0.5, "radius": 0.2, "shape": "circle", "colour": "blue"}]
    assert M.patch_owners(objects, 12, 4) == [0, 1, -1, 1, 1, 1, -1, 1, -1]
    # a third object on the border of the top-left and top-middle patches makes both mixed
    objects.append({"x": 1 / 3, "y": 0.05, "radius": 0.04, "shape": "cross", "colour": "green"})
    assert M.patch_owners(objects, 12, 4)[:3] == [None, None, -1]
    values = M.token_values({"objects": objects}, "shape", 12, 4)
    assert values == [None, None, None, M.BACKGROUND, "circle", "circle", "circle", M.BACKGROUND, "circle", M.BACKGROUND]


def test_routing_table_by_hand():
    table = M.routing_table(np.array([0, 1, 1, 2, 2]), ["a", "a", None, "b", "b"], num_experts=3)
    assert table == {"a": {"tokens": 2, "share": [0.5, 0.5, 0.0]}, "b": {"tokens": 2, "share": [0.0, 0.0, 1.0]}}


def test_scene_attributes_are_the_main_groups():
    scene = {"groups": [{"shape": "star", "colour": "red", "count": 2, "size": "small", "region": "left", "orientation": None},
                        {"shape": "circle", "colour": "blue", "count": 1, "size": "large", "region": "right", "orientation": None}]}
    assert M.scene_attributes(scene) == {"shape": "star", "colour": "red", "count": "2", "size": "small", "region": "left"}
