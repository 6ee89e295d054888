"""Where thread homes and volumes keep their files, and the safe ways to reach them."""
