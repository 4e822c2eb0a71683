"""The language of figure and widget labels: English, or Korean in the book's Korean edition.

Both editions of the book run the same code cells, so a label cannot be written in one language in
the code. Figures take their text through :func:`tr` instead::

    from detr_tutorial.language import tr
    ax.set_title(tr("image {k}: {n} detections", k=k, n=n))

In English (everywhere but the Korean edition) ``tr`` only fills in the fields. In a notebook
that lives in a folder named ``ko`` (``book/ko/``) it returns the Korean text of
:data:`KOREAN` and makes matplotlib draw Hangul with a Korean font. The catalog is keyed by the
English text, so code reads in English and a label without a Korean entry stays English (with a
warning; ``tests/test_book_text.py`` checks that every label the book's cells pass has one).

Korean text needs a font with Hangul: NanumGothic (Debian's ``fonts-nanum``, on the machines
that render the book), Noto Sans CJK KR, Malgun Gothic or Apple SD Gothic Neo. Where none is
installed (Colab, for one), ``tr`` keeps the English labels, as boxes in place of Hangul would
help nobody.
"""
from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

__all__ = ["LANGUAGES", "KOREAN", "KOREAN_FONTS", "book_language", "figure_language", "tr"]

logger = logging.getLogger(__name__)

#: the languages of the book's editions (and of the labels)
LANGUAGES = ("en", "ko")
#: fonts with Hangul, in order of preference
KOREAN_FONTS = ("NanumGothic", "NanumBarunGothic", "Noto Sans CJK KR", "Noto Sans KR", "Malgun Gothic",
                "Apple SD Gothic Neo")

#: English label (a ``str.format`` template) -> its Korean text, with the same fields. The
#: Korean terms are the book's term list (``book/glossary.yml``).
KOREAN: dict[str, str] = {
    # the shapes data set's classes
    "circle": "원", "rectangle": "직사각형", "triangle": "삼각형",
    # chapter 00
    "one image, a set of objects": "이미지 한 장, 객체의 집합",
    "raw output": "후처리 전 출력",
    "NMS, threshold {t}": "NMS, 임계값 {t}",
    "{name}: {score:.2f}": "{name}: {score:.2f}",
    # chapter 01
    "wide image (96 x 160)": "가로로 긴 이미지 (96 x 160)",
    "tall image (128 x 96)": "세로로 긴 이미지 (128 x 96)",
    "x (pixels)": "x (픽셀)", "y (pixels)": "y (픽셀)",
    "padding mask, dark = padding (True)": "패딩 마스크, 어두운 곳 = 패딩 (True)",
    "wide image: feature mask": "가로로 긴 이미지: 특징 맵의 마스크",
    "tall image: feature mask": "세로로 긴 이미지: 특징 맵의 마스크",
    "original 96 x 192": "원본 96 x 192",
    "squashed to 128 x 128": "128 x 128로 찌그러뜨림",
    "aspect kept + padding": "비율 유지 + 패딩",
    "its mask (dark = padding)": "그 마스크 (어두운 곳 = 패딩)",
    # chapter 02
    "channel {c} ({kind} {axis})": "채널 {c} ({kind} {axis})",
    "code of cell ({r}, {c}) . code of every cell": "칸 ({r}, {c})의 코드 · 모든 칸의 코드",
    # chapters 03 and 04
    "image 1, head 0: all cells": "이미지 1, 헤드 0: 모든 칸",
    "key cell": "키 칸", "query cell": "쿼리 칸",
    "image {b}: where cell (1, 2) looks": "이미지 {b}: 칸 (1, 2)가 보는 곳",
    "Encoder self-attention of a random model (structure only)":
        "무작위 모델의 인코더 셀프 어텐션 (구조만 봅니다)",
    "image {image}, query {query} (last layer)": "이미지 {image}, 쿼리 {query} (마지막 층)",
    "Decoder cross-attention of a random model (structure only)":
        "무작위 모델의 디코더 크로스 어텐션 (구조만 봅니다)",
    # chapter 06
    "targets t (solid), predictions q (dashed)": "정답 t (실선), 예측 q (점선)",
    "class: -p": "클래스: -p", "5 x L1": "5 x L1", "2 x (-GIoU)": "2 x (-GIoU)",
    "total C": "합계 C",
    "assignment (red: centre to centre)": "배정 (빨간 선: 중심과 중심)",
    # chapter 07
    "layer {l}": "층 {l}", "final": "마지막",
    "weighted loss": "가중 손실",
    "weighted loss terms per decoder layer": "디코더 층별 가중 손실 항",
    # chapter 08
    "val image {i}: {n} objects": "검증 이미지 {i}: 객체 {n}개",
    "weighted total loss": "가중 손실 합계",
    "step": "스텝",
    "last decoder layer, unweighted": "마지막 디코더 층, 가중치 없음",
    "L1 loss": "L1 손실", "GIoU loss": "GIoU 손실",
    "{loss}, last decoder layer": "{loss}, 마지막 디코더 층",
    "shapes-cpu model": "shapes-cpu 모델",
    "paper's DETR": "논문의 DETR",
    "{recipe}: the shipped model": "{recipe}: 배포 모델",
    "val {i}: best {n} of {q} queries": "검증 {i}: 쿼리 {q}개 중 상위 {n}개",
    # chapter 09
    "image {k}: {n} detections": "이미지 {k}: 검출 {n}개",
    "threshold {t}": "임계값 {t}",
    "score": "점수",
    "detections, sorted by score": "점수 순으로 정렬한 검출",
    "image 0: {above} of {n} detections above the threshold": "이미지 0: 검출 {n}개 중 {above}개가 임계값 이상",
    "point {point}": "점 {point}",
    "layer {layer}: looks at": "층 {layer}: 보는 곳",
    "layer {layer}: looked at by": "층 {layer}: 보이는 곳",
    "head {head}": "헤드 {head}",
    "last encoder layer, point {point}": "마지막 인코더 층, 점 {point}",
    # chapter 10
    "reference points (*) and sampled points": "기준점 (*)과 샘플링한 점",
    # detr_tutorial.runlog.plot_log
    "loss": "손실", "training loss": "학습 손실", "COCO metric": "COCO 지표", "validation": "검증",
    # benchmarks/bench_families.py and chapter 10's comparison
    "optimizer steps": "옵티마이저 스텝", "training minutes": "학습 시간(분)",
    "mAP (first 200 validation images)": "mAP (검증 이미지 앞 200장)",
    "Families on shapes ({variant})": "shapes 데이터셋의 모델 패밀리 ({variant})",
    "objects 12-48 px": "객체 12-48 px", "objects 6-16 px": "객체 6-16 px",
    "Conditional (shapes-cpu)": "Conditional (shapes-cpu)",
    "validation image size (px)": "검증 이미지 크기 (px)",
    "mAP at that size (first 200 scenes)": "그 크기에서의 mAP (장면 앞 200개)",
    "dense, stride {s}": "전체 어텐션, 스트라이드 {s}", "deformable, stride {s}": "변형 어텐션, 스트라이드 {s}",
    "deformable, 4 levels": "변형 어텐션, 4개 레벨", "image side (px)": "이미지 한 변 (px)",
    "one attention layer, forward + backward (ms)": "어텐션 층 하나, 순전파 + 역전파 (ms)",
    # detr_tutorial.viz: boxes, attention and matching figures
    "class {label}": "클래스 {label}",
    "no detections to show": "보여 줄 검출이 없습니다",
    "attention of {name}": "{name}의 어텐션",
    "mean of heads": "헤드 평균",
    "where this point looks": "이 점이 보는 곳",
    "what looks at this point": "이 점을 보는 곳",
    "point (x={x:.0f}, y={y:.0f}):\nfeature cell ({row}, {col}) of {h}x{w}":
        "점 (x={x:.0f}, y={y:.0f}):\n{h}x{w} 특징 맵의 칸 ({row}, {col})",
    "encoder layer {layer}, {head}:\n{direction}": "인코더 층 {layer}, {head}:\n{direction}",
    "encoder layer {layer}": "인코더 층 {layer}",
    "query {query}: {name} {score:.2f}": "쿼리 {query}: {name} {score:.2f}",
    "decoder layer {layer}, {head}:\nwhere query {query} looks":
        "디코더 층 {layer}, {head}:\n쿼리 {query}가 보는 곳",
    "decoder layer {layer}": "디코더 층 {layer}",
    "level {level}: {h}x{w} grid": "레벨 {level}: {h}x{w} 격자",
    "decoder layer {layer}, {head}: sampling points (area = weight)":
        "디코더 층 {layer}, {head}: 샘플링 점 (면적 = 가중치)",
    "no detection above the threshold": "임계값을 넘는 검출이 없습니다",
    "cost (dark = cheap)\n{low:.2f} .. {high:.2f}": "비용 (어두울수록 쌈)\n{low:.2f} .. {high:.2f}",
    "no ground truth:\nnothing to match": "정답 없음:\n매칭할 것이 없습니다",
    "ground truth": "정답", "query": "쿼리",
    "ground truth (solid) <- matched query (dashed)": "정답 (실선) <- 매칭된 쿼리 (점선)",
    "loss terms (unweighted)\ntotal {total:.3f}": "손실 항 (가중치 없음)\n합계 {total:.3f}",
    "matching cost = {c:g} class + {b:g} L1 + {g:g} GIoU": "매칭 비용 = {c:g}·클래스 + {b:g}·L1 + {g:g}·GIoU",
    # ipywidgets controls
    "image": "이미지", "image {i}": "이미지 {i}", "detection {i}": "검출 {i}", "query {query}": "쿼리 {query}",
    "threshold": "임계값", "detection": "검출", "layer": "층", "head": "헤드", "direction": "방향",
}


def book_language(default: str = "en") -> str:
    """``"ko"`` when the running notebook is in a folder named ``ko``, else ``default``.

    The notebook's path comes from ``JPY_SESSION_NAME`` (set by Jupyter servers); otherwise the
    working directory, which ``jupyter execute``, nbval and the book build set to the notebook's
    folder. Colab (working directory ``/content``) gets ``default``.
    """
    session = os.environ.get("JPY_SESSION_NAME")
    folder = Path(session).parent.name if session else Path.cwd().name
    return folder if folder in LANGUAGES else default


@lru_cache(maxsize=None)
def _korean_font() -> Optional[str]:
    """The first installed font of :data:`KOREAN_FONTS`, or ``None``."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    for name in KOREAN_FONTS:
        if name in installed:
            return name
    logger.warning("no font with Hangul is installed (tried %s): figure labels stay English "
                   "(on Debian or Colab: apt-get install fonts-nanum, then restart the kernel)",
                   ", ".join(KOREAN_FONTS))
    return None


class _BoldWeightNote(logging.Filter):
    """Drops matplotlib's note that a Korean font's bold face has weight 600 (it is the bold)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("findfont: Failed to find font weight bold for")
                    and any(font in message for font in KOREAN_FONTS))


def _use_font(name: str) -> None:
    """Draw text with matplotlib's DejaVu Sans and take the glyphs it lacks (Hangul) from ``name``.

    DejaVu Sans stays first because math text (the ``10^-2`` of log axes) cannot fall back to a
    second font, and Korean fonts lack the minus sign it draws.
    """
    import matplotlib

    family = ["DejaVu Sans", name]
    if list(matplotlib.rcParams["font.family"]) != family:
        matplotlib.rcParams["font.family"] = family
    font_log = logging.getLogger("matplotlib.font_manager")
    if not any(isinstance(f, _BoldWeightNote) for f in font_log.filters):
        font_log.addFilter(_BoldWeightNote())


def figure_language(lang: Optional[str] = None) -> str:
    """The language labels are drawn in: ``lang``, or :func:`book_language` when ``None``; Korean
    only where a Korean font is installed (which this then selects for matplotlib)."""
    lang = book_language() if lang is None else lang
    if lang not in LANGUAGES:
        raise ValueError(f"lang must be one of {', '.join(LANGUAGES)} (or None), got {lang!r}")
    if lang == "ko":
        font = _korean_font()
        if font is None:
            return "en"
        _use_font(font)
    return lang


_warned: set[str] = set()


def tr(text: str, *, lang: Optional[str] = None, known_only: bool = False, **fields: Any) -> str:
    """``text`` (a ``str.format`` template) in the label language, filled with ``fields``.

    ``known_only=True`` is for text that comes from data (class names): it is translated when the
    catalog has it and otherwise kept as it is, without a warning.
    """
    if not isinstance(text, str):
        raise TypeError(f"tr expects the English text as a str, got {type(text).__name__}")
    template = text
    if figure_language(lang) == "ko":
        if text in KOREAN:
            template = KOREAN[text]
        elif not known_only and text not in _warned:
            _warned.add(text)
            logger.warning("no Korean text for the label %r: it stays English (add it to "
                           "detr_tutorial.language.KOREAN)", text)
    return template.format(**fields) if fields else template


# Figures created before the first label still need the Korean font (matplotlib fixes a text's
# font family when it creates the text, e.g. an axes' title before ``set_title``): a notebook of
# the Korean edition selects it as soon as it imports this module.
if book_language() == "ko":
    figure_language("ko")
