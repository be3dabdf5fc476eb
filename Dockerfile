# ttcp: the BPF object ships precompiled inside the package, so the image needs
# no compiler, no kernel headers, no libbpf: only Python and the pinned wheels.
# Two stages: the final image is the base plus one layer, the virtualenv.
FROM python:3.11-slim AS build
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY ttcp ./ttcp
# Every version, the build backend's included, comes from constraints.txt.
ENV PIP_CONSTRAINT=/src/constraints.txt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv --without-pip /opt/ttcp \
 && python -m pip --python /opt/ttcp/bin/python install --no-warn-script-location .

FROM python:3.11-slim
COPY --from=build /opt/ttcp /opt/ttcp
ENV PATH=/opt/ttcp/bin:$PATH
EXPOSE 8090
# Needs --privileged, or the capabilities in README's Docker section, and a kernel with BTF.
ENTRYPOINT ["ttcp", "--host", "0.0.0.0"]
