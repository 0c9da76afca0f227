// Command validate decodes Kubernetes manifests strictly with the Kubernetes API's own Go types
// (k8s.io/api, registered in an apimachinery scheme; no client, no cluster): a field the API
// does not have at that place (a typo, or securityContext one level off), a duplicated field,
// or a kind this program does not know fails, naming the file, the document and the field.
//
//	go run . FILE...
//
// Exit status 0 when every document of every file decodes, 1 otherwise.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// newDecoder: a strict YAML decoder over the API groups the manifests use.
func newDecoder() (runtime.Decoder, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, rbacv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, err
		}
	}
	return json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme,
		json.SerializerOptions{Yaml: true, Strict: true}), nil
}

// check decodes every YAML document of one file; it returns one line per document.
func check(decoder runtime.Decoder, path string) ([]string, bool) {
	file, err := os.Open(path)
	if err != nil {
		return []string{err.Error()}, false
	}
	defer file.Close()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(file))
	var lines []string
	ok := true
	for index := 1; ; index++ {
		document, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return append(lines, fmt.Sprintf("%s: document %d: %v", path, index, err)), false
		}
		if isEmpty(document) {
			continue
		}
		object, kind, err := decoder.Decode(document, nil, nil)
		where := fmt.Sprintf("%s: document %d", path, index)
		if kind != nil {
			where += " (" + kind.Kind
			if meta, isMeta := object.(metav1.Object); isMeta && meta.GetName() != "" {
				where += " " + meta.GetName()
			}
			where += ")"
		}
		if err != nil {
			lines = append(lines, where+": "+err.Error())
			ok = false
			continue
		}
		lines = append(lines, where+": ok")
	}
	return lines, ok
}

// isEmpty: a document of comments and blank lines only (a leading or trailing ---).
func isEmpty(document []byte) bool {
	for _, line := range bytes.Split(document, []byte("\n")) {
		text := strings.TrimSpace(string(line))
		if text != "" && !strings.HasPrefix(text, "#") && text != "---" {
			return false
		}
	}
	return true
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: validate FILE... (Kubernetes manifests, YAML)")
		os.Exit(2)
	}
	decoder, err := newDecoder()
	if err != nil {
		fmt.Fprintln(os.Stderr, "validate:", err)
		os.Exit(2)
	}
	status := 0
	for _, path := range os.Args[1:] {
		lines, ok := check(decoder, path)
		for _, line := range lines {
			fmt.Println(line)
		}
		if !ok {
			status = 1
		}
	}
	os.Exit(status)
}
