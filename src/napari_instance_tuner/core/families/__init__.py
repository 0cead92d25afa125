"""Model families: one folder each, registered in :mod:`..registry`."""

#: The U-Net paper, cited by the model packages of the U-Net families.
UNET_CITATION = {
    "text": "Ronneberger O., Fischer P., Brox T. U-Net: convolutional networks for biomedical image segmentation. "
            "MICCAI 2015.",
    "doi": "10.1007/978-3-319-24574-4_28",
}
