"""``text-to-pdf``: a text object becomes a paginated PDF, streamed page by page.

* :mod:`.options` - the ``[pipelines.options]`` model;
* :mod:`.fonts` - finding and loading the TrueType font (DejaVu from ``fonts-dejavu-core``);
* :mod:`.decoding` - bytes to text, incrementally, with the byte offset of bad input;
* :mod:`.layout` - text to pages of display lines (tabs, wrapping, form feeds);
* :mod:`.subsets` - characters to font-subset codes and PDF string operands;
* :mod:`.pdfwriter` - PDF objects written to a file as they come, xref at the end;
* :mod:`.render` - one document: pages, title, page numbers, embedded font subsets;
* :mod:`.processor` - the processor: read the object, render off the event loop, upload.
"""
