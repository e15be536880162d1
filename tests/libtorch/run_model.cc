// Runs the exported TorchScript classifier with libtorch alone: no Python interpreter involved.
//
// Usage: run_model MODEL.pt INPUT.bin OUTPUT.bin
//
// INPUT.bin (native byte order):
//   int32   n_clips
//   int32   ends[n_clips]        accumulated sample counts (end offset of each clip)
//   float32 samples[ends[n-1]]   every clip's samples, concatenated
// OUTPUT.bin:
//   int32   n_clips, int32 n_classes
//   float32 logits[n_clips * n_classes], then float32 probabilities[n_clips * n_classes]
//
// Exit status: 0 on success, 2 on bad usage or input, 1 when loading or running the model fails.

#include <torch/script.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename T>
void read_exact(std::ifstream& in, T* data, std::size_t count, const char* what) {
  in.read(reinterpret_cast<char*>(data), static_cast<std::streamsize>(count * sizeof(T)));
  if (!in) throw UsageError(std::string("input file is truncated while reading ") + what);
}

// Reads the input file into a flat float32 waveform and int32 end offsets.
void read_input(const std::string& path, torch::Tensor& waveform, torch::Tensor& ends) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError("cannot open input file " + path);
  std::int32_t n_clips = 0;
  read_exact(in, &n_clips, 1, "the clip count");
  if (n_clips <= 0) throw UsageError("clip count must be positive, got " + std::to_string(n_clips));
  ends = torch::empty({n_clips}, torch::kInt32);
  read_exact(in, ends.data_ptr<std::int32_t>(), static_cast<std::size_t>(n_clips), "the clip ends");
  const std::int32_t* e = ends.data_ptr<std::int32_t>();
  for (std::int32_t i = 0; i < n_clips; ++i) {
    if (e[i] <= (i == 0 ? 0 : e[i - 1])) throw UsageError("clip ends must be strictly increasing and positive");
  }
  const std::int64_t n_samples = e[n_clips - 1];
  waveform = torch::empty({n_samples}, torch::kFloat32);
  read_exact(in, waveform.data_ptr<float>(), static_cast<std::size_t>(n_samples), "the samples");
  char extra;
  if (in.read(&extra, 1)) throw UsageError("input file has trailing bytes after the samples");
}

void write_output(const std::string& path, const torch::Tensor& logits, const torch::Tensor& probabilities) {
  const torch::Tensor l = logits.to(torch::kFloat32).contiguous();
  const torch::Tensor p = probabilities.to(torch::kFloat32).contiguous();
  if (l.dim() != 2 || l.sizes() != p.sizes()) throw std::runtime_error("model outputs are not two equal [n, classes] tensors");
  const std::int32_t shape[2] = {static_cast<std::int32_t>(l.size(0)), static_cast<std::int32_t>(l.size(1))};
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot open output file " + path);
  out.write(reinterpret_cast<const char*>(shape), sizeof(shape));
  out.write(reinterpret_cast<const char*>(l.data_ptr<float>()), static_cast<std::streamsize>(l.numel() * sizeof(float)));
  out.write(reinterpret_cast<const char*>(p.data_ptr<float>()), static_cast<std::streamsize>(p.numel() * sizeof(float)));
  if (!out) throw std::runtime_error("failed writing output file " + path);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: " << (argc > 0 ? argv[0] : "run_model") << " MODEL.pt INPUT.bin OUTPUT.bin\n";
    return 2;
  }
  torch::Tensor waveform, ends;
  try {
    read_input(argv[2], waveform, ends);
  } catch (const std::exception& error) {
    std::cerr << "run_model: " << error.what() << "\n";
    return 2;
  }
  try {
    torch::jit::Module module = torch::jit::load(argv[1], torch::kCPU);
    module.eval();
    torch::InferenceMode guard;
    const c10::IValue result = module.forward({waveform, ends});
    const auto outputs = result.toTuple();
    if (outputs->elements().size() < 2) throw std::runtime_error("model must return (logits, probabilities, ...)");
    write_output(argv[3], outputs->elements()[0].toTensor(), outputs->elements()[1].toTensor());
  } catch (const c10::Error& error) {
    std::cerr << "run_model: failed to load or run " << argv[1] << ": " << error.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& error) {
    std::cerr << "run_model: failed to load or run " << argv[1] << ": " << error.what() << "\n";
    return 1;
  }
  return 0;
}
