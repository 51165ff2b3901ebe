"""The crawler's spiders (Scrapy ``SPIDER_MODULES``)."""
