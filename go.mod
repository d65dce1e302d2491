module github.com/popgate/popgate

go 1.26

require (
	github.com/BurntSushi/toml v1.6.0 // indirect
	github.com/hashicorp/golang-lru/v2 v2.0.7
	github.com/lmittmann/tint v1.2.1 // indirect
)
