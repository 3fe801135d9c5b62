// Command argocd-registry-client reads a registry the way Argo CD Image Updater does, with its
// own registry client (github.com/argoproj-labs/argocd-image-updater/registry-scanner):
// registries.conf, endpoint lookup by image prefix, credentials from the endpoint's
// `credentials` field, then tags and per-tag manifest + config-blob metadata. JSON goes to
// stdout; every HTTP request the client makes goes to stderr as
// "HTTP GET <url> [accept=<types>] [auth=<scheme>]". With --strategy it also names the tag
// the updater would choose (newestTag).
//
//	argocd-registry-client --registries-conf FILE --image regcache.local/foo/bar [--tag T]
//	    [--strategy newest-build|digest|semver|alphabetical] [--platforms any|os/arch,...]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/argoproj-labs/argocd-image-updater/registry-scanner/pkg/image"
	"github.com/argoproj-labs/argocd-image-updater/registry-scanner/pkg/log"
	"github.com/argoproj-labs/argocd-image-updater/registry-scanner/pkg/registry"
)

type meta struct {
	Digest  string `json:"digest,omitempty"`
	Created string `json:"created"`
}

type result struct {
	Endpoint   map[string]string `json:"endpoint"`
	Repository string            `json:"repository"`
	Tags       []string          `json:"tags"`
	Metadata   map[string]meta   `json:"metadata"`
	// With --strategy: the tag the updater would pick (GetNewestVersionFromTags).
	Newest    *meta  `json:"newest,omitempty"`
	NewestTag string `json:"newestTag,omitempty"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "argocd-registry-client: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	conf := flag.String("registries-conf", "", "registries.conf to load (as the updater's --registries-conf-path)")
	imgRef := flag.String("image", "", "image as written in the updater's image list, e.g. 127.0.0.1:5000/foo/bar")
	onlyTag := flag.String("tag", "", "fetch metadata for this tag only (default: every tag)")
	strategy := flag.String("strategy", "", "if set (semver|newest-build|alphabetical|digest), run the updater's own "+
		"RegistryEndpoint.GetTags with that strategy instead; --tag is then its version constraint")
	platforms := flag.String("platforms", "", "comma-separated os/arch filter; empty: the runtime platform, as the updater; 'any': none")
	logLevel := flag.String("loglevel", "warn", "library log level (trace also logs its own 'Performing HTTP' lines)")
	flag.Parse()
	// The library's package-level log functions write to os.Stdout; keep stdout for the JSON.
	stdout := os.Stdout
	os.Stdout = os.Stderr
	if *imgRef == "" {
		fail("--image is required")
	}
	if err := log.SetLogLevel(*logLevel); err != nil {
		fail("%v", err)
	}
	ctx := context.Background()
	if *conf != "" {
		if err := registry.LoadRegistryConfiguration(ctx, *conf, false); err != nil {
			fail("loading %s: %v", *conf, err)
		}
	}
	img := image.NewFromIdentifier(*imgRef)
	ep, err := registry.GetRegistryEndpoint(ctx, img)
	if err != nil {
		fail("registry endpoint: %v", err)
	}
	// The endpoint's shared *http.Transport is used for every request (ping, token, API);
	// its Proxy hook sees each request, so it logs the exact URL and still connects directly.
	tr := ep.GetTransport()
	tr.Proxy = func(r *http.Request) (*url.URL, error) {
		line := "HTTP " + r.Method + " " + r.URL.String()
		if a := r.Header.Values("Accept"); len(a) > 0 {
			line += " accept=" + strings.Join(a, ",")
		}
		if a, _, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok {
			line += " auth=" + a
		}
		fmt.Fprintln(os.Stderr, line)
		return http.ProxyFromEnvironment(r)
	}
	creds, err := ep.SetEndpointCredentials(ctx, nil, "") // env:NAME and ext: work without Kubernetes
	if err != nil {
		fail("credentials: %v", err)
	}
	client, err := registry.NewClient(ep, creds.Username, creds.Password)
	if err != nil {
		fail("client: %v", err)
	}
	var plats []string
	if *platforms != "" && *platforms != "any" {
		plats = strings.Split(*platforms, ",")
	}
	opts := img.GetPlatformOptions(ctx, *platforms == "any", plats)
	// The name the updater asks the registry for (RegistryEndpoint.GetTags): the image path
	// without its registry host, with defaultns prepended to a one-element path.
	repo := img.ImageName
	if !strings.Contains(repo, "/") && ep.DefaultNS != "" {
		repo = ep.DefaultNS + "/" + repo
	}
	out := result{Repository: repo, Metadata: map[string]meta{}, Endpoint: map[string]string{
		"name": ep.RegistryName, "prefix": ep.RegistryPrefix, "api_url": ep.RegistryAPI, "defaultns": ep.DefaultNS}}

	if *strategy != "" {
		vc := &image.VersionConstraint{Constraint: *onlyTag, Strategy: img.ParseUpdateStrategy(ctx, *strategy)}
		vc.Options = opts.WithMetadata(vc.Strategy.NeedsMetadata())
		list, err := ep.GetTags(ctx, img, client, vc, true)
		if err != nil {
			fail("GetTags: %v", err)
		}
		for _, t := range list.SortAlphabetically() {
			out.Tags = append(out.Tags, t.TagName)
			out.Metadata[t.TagName] = meta{Digest: t.TagDigest, Created: t.TagDate.UTC().Format(time.RFC3339Nano)}
		}
		newest, err := img.GetNewestVersionFromTags(ctx, vc, list)
		if err != nil {
			fail("GetNewestVersionFromTags: %v", err)
		}
		if newest != nil {
			out.NewestTag = newest.TagName
			out.Newest = &meta{Digest: newest.TagDigest, Created: newest.TagDate.UTC().Format(time.RFC3339Nano)}
		}
	} else {
		// The calls GetTags makes for the newest-build strategy, one by one, keeping the digest.
		if err := client.NewRepository(repo); err != nil {
			fail("repository %s: %v", repo, err)
		}
		if out.Tags, err = client.Tags(ctx); err != nil {
			fail("tags: %v", err)
		}
		for _, t := range out.Tags {
			if *onlyTag != "" && t != *onlyTag {
				continue
			}
			m, err := client.ManifestForTag(ctx, t)
			if err != nil {
				fail("manifest %s: %v", t, err)
			}
			ti, err := client.TagMetadata(ctx, m, opts.WithMetadata(true))
			if err != nil {
				fail("metadata %s: %v", t, err)
			}
			if ti == nil { // the updater skips a tag with no manifest for the wanted platforms
				fmt.Fprintf(os.Stderr, "argocd-registry-client: %s: no manifest for platforms %v\n", t, opts.Platforms())
				continue
			}
			out.Metadata[t] = meta{Digest: ti.EncodedDigest(), Created: ti.CreatedAt.UTC().Format(time.RFC3339Nano)}
		}
	}
	if out.Tags == nil {
		out.Tags = []string{}
	}
	sort.Strings(out.Tags)
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fail("%v", err)
	}
}
