// helm-render renders a Helm chart the way `helm template` does, for tests on machines without
// helm: Go's text/template with the Sprig functions (the engine and function library Helm is built
// on) plus Helm's own include, fail, required, toYaml and lookup (which, as in `helm template`,
// finds nothing). Values are read as JSON-compatible data, as Helm reads them (numbers are
// float64), and value files merge onto values.yaml as Helm merges them.
//
//	helm-render CHART_DIR RELEASE [VALUES_FILE...] > manifests.yaml
//
// A `fail` in a template, or any template error, is printed to stderr with exit status 1.
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v2"
)

// jsonish turns YAML's map[interface{}]interface{} and ints into what Helm's JSON-based reader gives.
func jsonish(v interface{}) interface{} {
	switch x := v.(type) {
	case map[interface{}]interface{}:
		m := map[string]interface{}{}
		for k, val := range x {
			m[fmt.Sprint(k)] = jsonish(val)
		}
		return m
	case []interface{}:
		out := make([]interface{}, len(x))
		for i, val := range x {
			out[i] = jsonish(val)
		}
		return out
	case int:
		return float64(x)
	case int64:
		return float64(x)
	default:
		return v
	}
}

func readYaml(path string) map[string]interface{} {
	data, err := os.ReadFile(path)
	if err != nil {
		die("%v", err)
	}
	var v interface{}
	if err := yaml.Unmarshal(data, &v); err != nil {
		die("%s: %v", path, err)
	}
	if v == nil {
		return map[string]interface{}{}
	}
	m, ok := jsonish(v).(map[string]interface{})
	if !ok {
		die("%s: not a map", path)
	}
	return m
}

// merge lays `over` onto `base` as Helm does: maps key by key, anything else replaced (null deletes).
func merge(base, over map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		if v == nil {
			delete(out, k)
			continue
		}
		bm, bok := out[k].(map[string]interface{})
		om, ook := v.(map[string]interface{})
		if bok && ook {
			out[k] = merge(bm, om)
		} else {
			out[k] = v
		}
	}
	return out
}

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func toYaml(v interface{}) string {
	data, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func main() {
	if len(os.Args) < 3 {
		die("usage: helm-render CHART_DIR RELEASE [VALUES_FILE...]")
	}
	chartDir, release := os.Args[1], os.Args[2]
	chart := readYaml(filepath.Join(chartDir, "Chart.yaml"))
	values := readYaml(filepath.Join(chartDir, "values.yaml"))
	for _, f := range os.Args[3:] {
		values = merge(values, readYaml(f))
	}
	name := fmt.Sprint(chart["name"])
	base := name + "/templates"

	root := template.New("root")
	funcs := sprig.TxtFuncMap()
	funcs["toYaml"] = toYaml
	funcs["fail"] = func(msg string) (string, error) { return "", fmt.Errorf("%s", msg) }
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	funcs["lookup"] = func(string, string, string, string) map[string]interface{} { return map[string]interface{}{} }
	funcs["include"] = func(tname string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, tname, data)
		return buf.String(), err
	}
	root.Funcs(funcs).Option("missingkey=zero")

	files, _ := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	sort.Strings(files)
	var renderable []string
	for _, f := range files {
		ext := filepath.Ext(f)
		if ext != ".yaml" && ext != ".tpl" {
			continue
		}
		text, err := os.ReadFile(f)
		if err != nil {
			die("%v", err)
		}
		tname := base + "/" + filepath.Base(f)
		if _, err := root.New(tname).Parse(string(text)); err != nil {
			die("%v", err)
		}
		if ext == ".yaml" {
			renderable = append(renderable, tname)
		}
	}

	for _, tname := range renderable {
		data := map[string]interface{}{
			"Values":   values,
			"Release":  map[string]interface{}{"Name": release, "Namespace": "default", "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1},
			"Chart":    map[string]interface{}{"Name": name, "Version": chart["version"], "AppVersion": chart["appVersion"]},
			"Template": map[string]interface{}{"Name": tname, "BasePath": base},
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, tname, data); err != nil {
			die("%v", err)
		}
		out := strings.TrimSpace(buf.String())
		if out == "" {
			continue
		}
		fmt.Printf("---\n# Source: %s\n%s\n", tname, out)
	}
}
