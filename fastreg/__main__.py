"""`python -m fastreg`: how the extension was built and which devices it sees."""

import torch

import fastreg


def main():
    info = fastreg.build_info()
    for key in ("version", "with_cuda", "cuda_arch_list", "compiler", "torch_version", "cpu_isa"):
        print(f"{key:15} {info[key]}")
    print(f"{'torch (runtime)':15} {torch.__version__}")
    print(f"{'cpu threads':15} {torch.get_num_threads()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"{'cuda:' + str(i):15} {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs")
    else:
        print(f"{'cuda':15} not available")


if __name__ == "__main__":
    main()
