.PHONY: bpf check-bpf test

# The CO-RE object shipped in the package (needs clang, llvm-strip; see bpf/Makefile).
bpf:
	$(MAKE) -C bpf

# Fails when the committed object is not what the sources build.
check-bpf: bpf
	git diff --exit-code --stat -- otelproc/bpf/otelproc.bpf.o

test:
	python3 -m pytest
