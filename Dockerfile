# ttcp: the BPF object ships precompiled inside the package, so the image needs
# no compiler, no kernel headers, no libbpf — only Python and two wheels.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ttcp ./ttcp
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
EXPOSE 8090
# Needs: docker run --privileged (or CAP_BPF+CAP_PERFMON, see README) on a kernel with BTF.
ENTRYPOINT ["ttcp", "--host", "0.0.0.0"]
