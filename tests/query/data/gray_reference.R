# Reference values for tests/query/test_survival.py: R's cmprsk::cuminc (Gray's test) on the patients of
# gray_reference.csv with every time at the end of its grid interval (grid_time). Run:
#   Rscript tests/query/data/gray_reference.R > tests/query/data/gray_reference.json
# (R 4.2.2, cmprsk 2.2-11 from Debian's r-cran-cmprsk when it was made.)
library(cmprsk)
d <- read.csv("tests/query/data/gray_reference.csv")
plain <- cuminc(d$grid_time, d$status, d$group, cencode = 0)$Tests
strat <- cuminc(d$grid_time, d$status, d$group, d$stratum, cencode = 0)$Tests
row <- function(t, cause) sprintf('{"stat": %.15g, "pv": %.15g, "df": %d}', t[cause, "stat"], t[cause, "pv"], as.integer(t[cause, "df"]))
cat(sprintf('{"cmprsk": "%s", "R": "%s",\n "plain": {"1": %s, "2": %s},\n "stratified": {"1": %s, "2": %s}}\n',
            packageVersion("cmprsk"), getRversion(), row(plain, "1"), row(plain, "2"), row(strat, "1"), row(strat, "2")))
