# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import os

import gguf
import pytest
from gguf_files import (
    tensor_bytes,
    write_llama31_8b_q4_k_m,
    write_qwen25_72b_q2_k,
    write_sparse_gguf,
    write_tiny_llama_f16,
)

from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_model import (
    GGUFModelError,
    read_gguf_model,
    split_files,
)


@pytest.fixture(scope="module")
def qwen_files(tmp_path_factory):
    return write_qwen25_72b_q2_k(tmp_path_factory.mktemp("qwen"))


def test_the_first_split_finds_all_seven_and_their_metadata(qwen_files):
    model = read_gguf_model([str(qwen_files[0])])

    assert [os.path.basename(path) for path in model.files] == [
        f"qwen2.5-72b-instruct-q2_k-{number:05d}-of-00007.gguf" for number in range(1, 8)
    ]
    assert (model.architecture, model.file_type) == ("qwen2", "Q2_K")
    assert (model.block_count, model.head_count, model.head_count_kv[0]) == (80, 64, 8)
    assert (model.embedding_length, model.feed_forward_length, model.vocab_size) == (8192, 29568, 152064)
    assert (model.key_length, model.value_length, model.context_length) == (128, 128, 32768)
    # llama.cpp's loader prints "type q2_K: 321 tensors" and so on for this file: 963 in all.
    assert model.type_counts() == {"F32": 401, "Q2_K": 321, "Q3_K": 80, "Q5_K": 80, "IQ4_NL": 80, "Q6_K": 1}
    assert model.total_bytes == 29_805_772_800


def test_tensor_sizes_come_from_ggml_block_sizes(qwen_files):
    model = read_gguf_model([str(qwen_files[0])])
    by_name = {tensor.name: tensor for tensor in model.tensors}

    # Q2_K packs 256 weights in 84 bytes; IQ4_NL 32 in 18; Q6_K 256 in 210.
    assert by_name["token_embd.weight"].n_bytes == 8192 * 152064 // 256 * 84
    assert by_name["blk.79.ffn_down.weight"].n_bytes == 29568 * 8192 // 32 * 18
    assert by_name["output.weight"].n_bytes == 8192 * 152064 // 256 * 210
    assert by_name["blk.0.attn_v.weight"].shape == [8192, 1024]
    assert model.input_bytes == by_name["token_embd.weight"].n_bytes
    assert model.output_bytes == by_name["output.weight"].n_bytes + 8192 * 4
    assert not model.tied_output


def test_tensors_are_sorted_into_input_layers_and_output(qwen_files):
    model = read_gguf_model([str(qwen_files[0])])
    roles = {}
    for tensor in model.tensors:
        roles.setdefault(tensor.role, set()).add(tensor.name)

    assert roles["input"] == {"token_embd.weight"}
    assert roles["output"] == {"output_norm.weight", "output.weight"}
    layer_sizes = model.layer_bytes()
    assert len(layer_sizes) == 80 and len(set(layer_sizes)) == 1
    assert sum(layer_sizes) + model.input_bytes + model.output_bytes == model.total_bytes


def test_the_splits_are_sparse_so_the_test_costs_no_disk(qwen_files):
    assert sum(os.path.getsize(path) for path in qwen_files) > 29_805_772_800
    assert sum(os.stat(path).st_blocks * 512 for path in qwen_files) < 4 * 1024 * 1024


def test_any_split_names_the_whole_model(qwen_files):
    model = read_gguf_model([str(qwen_files[3]), str(qwen_files[0])])

    assert model.files == [str(path) for path in qwen_files]
    assert len(model.tensors) == 963


def test_a_missing_split_fails_naming_it(tmp_path):
    files = write_qwen25_72b_q2_k(tmp_path)
    files[4].unlink()

    with pytest.raises(GGUFModelError) as error:
        read_gguf_model([str(files[0])])

    assert error.value.field == "model_files"
    assert "1 of 7" in str(error.value) and files[4].name in str(error.value)


def test_a_split_renamed_to_another_count_is_refused(tmp_path):
    tensors = [("token_embd.weight", (64, 32), "F16")] + [
        (f"blk.{layer}.attn_q.weight", (64, 64), "F16") for layer in range(2)
    ]
    files = write_sparse_gguf(tmp_path / "small.gguf", "llama", {"llama.block_count": 2}, tensors, splits=3)
    files[2].unlink()
    for number, path in enumerate(files[:2], start=1):
        path.rename(tmp_path / f"small-{number:05d}-of-00002.gguf")

    with pytest.raises(GGUFModelError, match=r"split\.count"):
        read_gguf_model([str(tmp_path / "small-00001-of-00002.gguf")])


def test_a_cut_off_download_is_reported_as_such(tmp_path):
    path = write_llama31_8b_q4_k_m(tmp_path)[0]
    os.truncate(path, 5_000_000)

    with pytest.raises(GGUFModelError, match="download it again"):
        read_gguf_model([str(path)])


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"<html>403 Forbidden</html>" * 10)

    with pytest.raises(GGUFModelError, match="not a readable GGUF file"):
        read_gguf_model([str(path)])


def test_llama_31_8b_q4_k_m_matches_the_published_file(tmp_path):
    model = read_gguf_model([str(write_llama31_8b_q4_k_m(tmp_path)[0])])

    # llama.cpp lists this file as f32: 66, q4_K: 193, q6_K: 33 tensors; the hub file is 4.92 GB, tokenizer included.
    assert model.type_counts() == {"F32": 66, "Q4_K": 193, "Q6_K": 33}
    assert 4.90e9 < model.total_bytes < 4.92e9
    assert (model.block_count, model.head_count_kv[0], model.vocab_size) == (32, 8, 128256)


def test_tied_embeddings_load_token_embd_again_as_output(tmp_path):
    model = read_gguf_model([str(write_tiny_llama_f16(tmp_path)[0])])

    assert model.tied_output
    assert model.output_bytes == tensor_bytes((256, 512), "F16") + 256 * 4
    assert model.to_dict()["tied_output"] is True


def test_split_file_names_follow_gguf_split():
    assert split_files("/m/x-00002-of-00003.gguf") == [
        "/m/x-00001-of-00003.gguf",
        "/m/x-00002-of-00003.gguf",
        "/m/x-00003-of-00003.gguf",
    ]
    assert split_files("/m/x.gguf") == ["/m/x.gguf"]
    assert gguf.gguf_writer.SHARD_NAME_FORMAT.format("x", 2, 3) == "x-00002-of-00003.gguf"


def test_no_file_given_names_the_option():
    with pytest.raises(GGUFModelError) as error:
        read_gguf_model([])
    assert error.value.field == "model_files"
